package agent

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/remotecommand"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
)

// spec.paused pauses the sandbox (reason Spec); exec, attach and files are
// refused with 409 until a sync clears it, which resumes it.
func TestPauseFollowsSpec(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	a, srv, _ := startInteractive(t, rt)
	s := sbx("a")
	syncAs(t, srv, 1, s)
	s.Paused = true
	resp := syncAs(t, srv, 2, s)
	if st := resp.Sandboxes[0]; st.State != api.StatePaused || st.PauseReason != api.PauseReasonSpec {
		t.Errorf("sync answer %+v, want Paused by Spec", st)
	}
	if p, r := rt.counts("a"); p != 1 || r != 0 {
		t.Errorf("pauses %d resumes %d", p, r)
	}
	if st := statusOf(a, "a"); st.State != api.StatePaused || st.PauseReason != api.PauseReasonSpec {
		t.Errorf("status %+v", st)
	}
	// The same sync again changes nothing.
	syncAs(t, srv, 3, s)
	if p, _ := rt.counts("a"); p != 1 {
		t.Errorf("paused %d times", p)
	}
	for _, tc := range []struct{ method, u string }{
		{http.MethodPost, routeURL(srv, api.PathExec, "a", execQuery("echo"))},
		{http.MethodPost, routeURL(srv, api.PathAttach, "a", url.Values{paramStdout: {"1"}})},
		{http.MethodGet, routeURL(srv, api.PathFiles, "a", url.Values{"path": {"/"}, "op": {"list"}})},
		{http.MethodPut, routeURL(srv, api.PathFiles, "a", url.Values{"path": {"/x"}})},
	} {
		code, body := do(t, identityAPIServer, tc.method, tc.u, strings.NewReader("x"))
		if code != http.StatusConflict || !strings.Contains(body, msgPausedBySpec) {
			t.Errorf("%s %s: %d %s, want 409 %q", tc.method, tc.u, code, body, msgPausedBySpec)
		}
	}
	// Through the SPDY executor, the refusal's message reaches the client.
	err := stream(t, srv, identityAPIServer, api.PathExec, "a", execQuery("echo"), remotecommand.StreamOptions{Stdout: io.Discard})
	if err == nil || !strings.Contains(err.Error(), msgPausedBySpec) {
		t.Errorf("exec: %v, want %q", err, msgPausedBySpec)
	}
	// Logs can be read while paused.
	if code, _ := do(t, identityAPIServer, http.MethodGet, routeURL(srv, api.PathLogs, "a", url.Values{"tailLines": {"1"}}), nil); code != 200 {
		t.Errorf("logs of a paused sandbox: %d", code)
	}

	s.Paused = false
	resp = syncAs(t, srv, 4, s)
	if st := resp.Sandboxes[0]; st.State != api.StateRunning || st.PauseReason != "" {
		t.Errorf("sync answer %+v, want Running", st)
	}
	if p, r := rt.counts("a"); p != 1 || r != 1 {
		t.Errorf("pauses %d resumes %d", p, r)
	}
	if err := stream(t, srv, identityAPIServer, api.PathExec, "a", execQuery("echo"), remotecommand.StreamOptions{Stdout: io.Discard}); err != nil {
		t.Errorf("exec after resume: %v", err)
	}
	// A paused sandbox holds its slot.
	s.Paused = true
	syncAs(t, srv, 5, s)
	if st := a.Status(context.Background()); st.Allocated.Slots != 1 {
		t.Errorf("allocated %+v, want the paused sandbox's slot", st.Allocated)
	}
}

// A sandbox created paused is paused once it runs.
func TestCreatedPaused(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	_, srv, _ := startInteractive(t, rt)
	s := sbx("a")
	s.Paused = true
	syncAs(t, srv, 1, s)
	if !eventually(func() bool { p, _ := rt.counts("a"); return p == 1 }) {
		t.Fatal("a sandbox created paused was not paused")
	}
}

// An idle sandbox with policy Pause is paused by the agent (reason Idle);
// the next exec resumes it first. Activity, and a call in progress, keep
// it running.
func TestIdlePause(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	a, srv, clk := startInteractive(t, rt)
	s := sbx("a")
	s.IdleTimeoutSeconds = 60
	syncAs(t, srv, 1, s)
	start := clk.Now()
	if st := statusOf(a, "a"); st.LastActivity == nil || !st.LastActivity.Equal(start) {
		t.Errorf("last activity %v, want %v", st.LastActivity, start)
	}

	clk.Step(59 * time.Second)
	a.checkIdle()
	if p, _ := rt.counts("a"); p != 0 {
		t.Fatal("paused before its timeout")
	}
	clk.Step(time.Second)
	a.checkIdle()
	if p, _ := rt.counts("a"); p != 1 {
		t.Fatal("an idle sandbox was not paused")
	}
	if st := statusOf(a, "a"); st.State != api.StatePaused || st.PauseReason != api.PauseReasonIdle || st.Idle {
		t.Errorf("status %+v, want Paused as Idle", st)
	}
	// A sync that does not ask to pause leaves it paused as idle.
	if resp := syncAs(t, srv, 2, s); resp.Sandboxes[0].PauseReason != api.PauseReasonIdle {
		t.Errorf("sync answer %+v", resp.Sandboxes[0])
	}

	// exec resumes it first (the fake runtime refuses an exec while paused).
	clk.Step(time.Minute)
	var out strings.Builder
	if err := stream(t, srv, identityAPIServer, api.PathExec, "a", execQuery("echo", "hi"), remotecommand.StreamOptions{Stdout: &out}); err != nil || out.String() != "hi" {
		t.Fatalf("exec on an idle sandbox: %q %v", out.String(), err)
	}
	if p, r := rt.counts("a"); p != 1 || r != 1 {
		t.Errorf("pauses %d resumes %d", p, r)
	}
	st := statusOf(a, "a")
	if st.State != api.StateRunning || st.LastActivity == nil || !st.LastActivity.Equal(clk.Now()) {
		t.Errorf("status after exec %+v", st)
	}
	// The exec was activity: the timeout counts from its end.
	clk.Step(59 * time.Second)
	a.checkIdle()
	if p, _ := rt.counts("a"); p != 1 {
		t.Error("paused less than its timeout after an exec")
	}

	// A call in progress is activity until it ends.
	stop := startBlocking(t, srv, rt, "a")
	clk.Step(10 * time.Minute)
	a.checkIdle()
	if p, _ := rt.counts("a"); p != 1 {
		t.Error("paused during an exec")
	}
	stop()
	if !eventually(func() bool { return active(a, "a") == 0 }) {
		t.Fatal("the exec never ended")
	}
	clk.Step(time.Minute)
	a.checkIdle()
	if p, _ := rt.counts("a"); p != 2 {
		t.Fatalf("pauses %d, want 2", p)
	}
	// Files resume an idle sandbox too.
	if code, body := do(t, identityAPIServer, http.MethodGet, routeURL(srv, api.PathFiles, "a", url.Values{"path": {"/"}, "op": {"stat"}}), nil); code != 200 {
		t.Errorf("files on an idle sandbox: %d %s", code, body)
	}
	if _, r := rt.counts("a"); r != 2 {
		t.Errorf("files did not resume the sandbox: resumes %d", r)
	}
	// Removing the timeout resumes a sandbox paused as idle.
	clk.Step(time.Minute)
	a.checkIdle()
	s.IdleTimeoutSeconds = 0
	if resp := syncAs(t, srv, 3, s); resp.Sandboxes[0].State != api.StateRunning {
		t.Errorf("without a timeout: %+v, want Running", resp.Sandboxes[0])
	}
	if p, r := rt.counts("a"); p != 3 || r != 3 {
		t.Errorf("pauses %d resumes %d, want 3 and 3", p, r)
	}
}

// An idle sandbox with policy Delete is reported Idle, never paused;
// activity makes it not idle.
func TestIdleDelete(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	a, srv, clk := startInteractive(t, rt)
	s := sbx("a")
	s.IdleTimeoutSeconds, s.IdlePolicy = 30, api.IdlePolicyDelete
	syncAs(t, srv, 1, s)
	clk.Step(29 * time.Second)
	if st := statusOf(a, "a"); st.Idle {
		t.Error("idle before its timeout")
	}
	clk.Step(time.Second)
	a.checkIdle()
	if st := statusOf(a, "a"); !st.Idle || st.State != api.StateRunning {
		t.Errorf("status %+v, want Running and Idle", st)
	}
	if resp := syncAs(t, srv, 2, s); !resp.Sandboxes[0].Idle {
		t.Errorf("sync answer %+v, want Idle", resp.Sandboxes[0])
	}
	if p, _ := rt.counts("a"); p != 0 {
		t.Error("a sandbox of policy Delete was paused")
	}
	if err := stream(t, srv, identityAPIServer, api.PathExec, "a", execQuery("echo"), remotecommand.StreamOptions{Stdout: io.Discard}); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(a, "a"); st.Idle {
		t.Error("still idle after an exec")
	}
	// A log follow in progress is activity too.
	done := make(chan struct{})
	go func() {
		defer close(done)
		do(t, identityAPIServer, http.MethodGet, routeURL(srv, api.PathLogs, "a", url.Values{"follow": {"1"}}), nil)
	}()
	if !eventually(func() bool { return active(a, "a") == 1 }) {
		t.Fatal("the log follow is not counted")
	}
	clk.Step(time.Hour)
	if st := statusOf(a, "a"); st.Idle {
		t.Error("idle while its log is followed")
	}
	close(rt.logs)
	<-done
	if !eventually(func() bool { return active(a, "a") == 0 }) {
		t.Fatal("the log follow never ended")
	}
	clk.Step(30 * time.Second)
	if st := statusOf(a, "a"); !st.Idle {
		t.Error("not idle 30s after the follow ended")
	}
}

// A sandbox the agent adopts paused (it restarted) is paused by spec if
// the spec says so, paused as idle if its policy pauses idle sandboxes, and
// resumed otherwise.
func TestAdoptedPaused(t *testing.T) {
	for name, tc := range map[string]struct {
		spec        func(*api.SandboxSpec)
		wantReason  string
		wantResumes int
	}{
		"by spec": {func(s *api.SandboxSpec) { s.Paused = true }, api.PauseReasonSpec, 0},
		"as idle": {func(s *api.SandboxSpec) { s.IdleTimeoutSeconds = 60 }, api.PauseReasonIdle, 0},
		"neither": {func(*api.SandboxSpec) {}, "", 1},
	} {
		t.Run(name, func(t *testing.T) {
			fake := newFakeRuntime(api.SandboxStatus{UID: "a", Namespace: "ns", Name: "n-a", State: api.StatePaused})
			rt := newFakeInteractive(t, fake)
			rt.paused["a"] = true
			a, srv, _ := startInteractive(t, rt)
			// Before the first sync nobody knows why it is paused.
			code, body := do(t, identityAPIServer, http.MethodPost, routeURL(srv, api.PathExec, "a", execQuery("echo")), nil)
			if code != http.StatusServiceUnavailable {
				t.Errorf("exec before the first sync: %d %s, want 503", code, body)
			}
			s := sbx("a")
			tc.spec(&s)
			syncAs(t, srv, 1, s)
			st := statusOf(a, "a")
			if _, r := rt.counts("a"); r != tc.wantResumes {
				t.Errorf("resumes %d, want %d", r, tc.wantResumes)
			}
			if tc.wantReason == "" {
				if st.State != api.StateRunning {
					t.Errorf("status %+v, want Running", st)
				}
				return
			}
			if st.State != api.StatePaused || st.PauseReason != tc.wantReason {
				t.Errorf("status %+v, want Paused by %s", st, tc.wantReason)
			}
		})
	}
}

// A finished sandbox answers exec, attach and files with 409; its logs are
// still there.
func TestFinishedRefuses(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	a, srv, _ := startInteractive(t, rt)
	syncAs(t, srv, 1, sbx("a"))
	code := int32(0)
	rt.exits <- api.SandboxStatus{UID: "a", State: api.StateExited, ExitCode: &code}
	if !eventually(func() bool { return statusOf(a, "a").State == api.StateExited }) {
		t.Fatal("the exit never reached the status")
	}
	close(rt.logs) // its output ends
	for _, tc := range []struct{ method, u string }{
		{http.MethodPost, routeURL(srv, api.PathExec, "a", execQuery("echo"))},
		{http.MethodGet, routeURL(srv, api.PathAttach, "a", url.Values{paramStdout: {"1"}})},
		{http.MethodGet, routeURL(srv, api.PathFiles, "a", url.Values{"path": {"/"}})},
	} {
		code, body := do(t, identityAPIServer, tc.method, tc.u, nil)
		if code != http.StatusConflict || !strings.Contains(body, msgFinished) {
			t.Errorf("%s %s: %d %s, want 409 %q", tc.method, tc.u, code, body, msgFinished)
		}
	}
	if code, body := do(t, identityAPIServer, http.MethodGet, routeURL(srv, api.PathLogs, "a", url.Values{"follow": {"1"}}), nil); code != 200 || body != "output\n" {
		t.Errorf("logs of a finished sandbox: %d %q", code, body)
	}
}
