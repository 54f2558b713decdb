package containerd

// WaitExit is waitExitOf for the package's external tests.
var WaitExit = waitExitOf

// StartContainerd is startContainerd for the package's external tests.
var StartContainerd = startContainerd
