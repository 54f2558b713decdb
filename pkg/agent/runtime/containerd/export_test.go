package containerd

import "time"

// WaitExit is waitExitOf for the package's external tests.
var WaitExit = waitExitOf

// StartContainerd is startContainerd for the package's external tests.
var StartContainerd = startContainerd

// OnAttach sets the function called after every Attach the runtime makes,
// with the container ID and how long it took (nil: none).
func OnAttach(f func(id string, took time.Duration)) {
	if f == nil {
		onAttach.Store(nil)
		return
	}
	onAttach.Store(&f)
}

// EgressAttached lists the ids the runtime's network Manager has attached,
// nil without one.
func EgressAttached(r *Runtime) []string {
	if r.egress == nil {
		return nil
	}
	return r.egress.List()
}

// EgressEnabled says whether the runtime has a network Manager.
func EgressEnabled(r *Runtime) bool { return r.egress != nil }

// UserNamespacesOn says whether the runtime gives containers user namespaces.
func UserNamespacesOn(r *Runtime) bool { return r.userns }

// ExecServerID is the containerd exec ID of a container's exec server.
const ExecServerID = execServerID
