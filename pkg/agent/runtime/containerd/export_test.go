package containerd

// WaitExit is waitExitOf for the package's external tests.
var WaitExit = waitExitOf
