package containerd

import (
	contribapparmor "github.com/containerd/containerd/v2/contrib/apparmor"
	"github.com/containerd/containerd/v2/pkg/apparmor"
)

// AppArmor.
//
// Where the node has AppArmor (enabled in the kernel, apparmor_parser
// present; as containerd's CRI plugin decides), every sandbox runs under
// containerd's default profile, the one the CRI plugin gives Pods (no
// mounts, no writes to most of /proc and /sys, ...), loaded once by
// Initialize under the name AppArmorProfile (apparmor_parser, only if a
// profile of that name is not loaded yet). Inside an agent Pod that means
// apparmor_parser in the agent's image and the node's securityfs. Where
// AppArmor is not there, or the profile cannot be loaded, sandboxes run
// without a profile, as containerd would run them; it is logged once.

// AppArmorProfile is the name of the profile sandboxes run under.
const AppArmorProfile = "fast-sandbox-default"

// appArmorSupported and loadAppArmorProfile are replaced by tests.
var (
	appArmorSupported   = apparmor.HostSupports
	loadAppArmorProfile = contribapparmor.LoadDefaultProfile
)

// initAppArmor loads the profile, if the node has AppArmor, and says
// whether sandboxes run under it.
func (r *Runtime) initAppArmor() {
	if !appArmorSupported() {
		r.log.Info("AppArmor is not available on this node (or to the agent): sandboxes run without an AppArmor profile")
		return
	}
	if err := loadAppArmorProfile(AppArmorProfile); err != nil {
		r.log.Error(err, "loading the AppArmor profile of sandboxes; they run without one", "profile", AppArmorProfile)
		return
	}
	r.appArmorProfile = AppArmorProfile
}
