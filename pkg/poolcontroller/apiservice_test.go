package poolcontroller

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	aggregatorfake "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset/fake"

	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// apiServiceEnv is a credsEnv whose controller keeps the APIService of a
// fake apiregistration client, with a fake event recorder. Tests drive its
// queue themselves.
type apiServiceEnv struct {
	*credsEnv
	agg      *aggregatorfake.Clientset
	k        *apiServiceKeeper
	recorder *events.FakeRecorder
}

func newAPIServiceEnv(t *testing.T, kube *k8sfake.Clientset, now time.Time, apiServices ...runtime.Object) *apiServiceEnv {
	t.Helper()
	e := newCredsEnv(t, kube, now)
	agg := aggregatorfake.NewClientset(apiServices...)
	if err := e.c.SetSandboxAPIServer(SandboxAPIServerOptions{Client: agg}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.SetSandboxAPIServer(SandboxAPIServerOptions{Client: agg}); err == nil {
		t.Error("SetSandboxAPIServer twice succeeded")
	}
	recorder := events.NewFakeRecorder(100)
	recorder.Verbose = true
	e.c.recorder = recorder
	k := e.c.creds.apiService
	ctx, cancel := context.WithCancel(e.ctx)
	k.factory.Start(ctx.Done())
	t.Cleanup(func() { cancel(); k.factory.Shutdown(); k.queue.ShutDown() })
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true,
		func(context.Context) (bool, error) { return k.synced(), nil }); err != nil {
		t.Fatal("the APIService informer did not sync")
	}
	return &apiServiceEnv{credsEnv: e, agg: agg, k: k, recorder: recorder}
}

// process waits until the APIService is queued, then checks it once.
func (e *apiServiceEnv) process() {
	e.t.Helper()
	if err := wait.PollUntilContextTimeout(e.ctx, 5*time.Millisecond, 5*time.Second, true,
		func(context.Context) (bool, error) { return e.k.queue.Len() > 0, nil }); err != nil {
		e.t.Fatal("the APIService was never queued")
	}
	if !e.c.processNextAPIService(e.ctx) {
		e.t.Fatal("the queue is shut down")
	}
}

// idle checks that nothing is queued for a while.
func (e *apiServiceEnv) idle() {
	e.t.Helper()
	time.Sleep(100 * time.Millisecond)
	if n := e.k.queue.Len(); n != 0 {
		e.t.Errorf("%d items queued, want none", n)
	}
}

func (e *apiServiceEnv) apiService() *apiregistrationv1.APIService {
	e.t.Helper()
	s, err := e.agg.ApiregistrationV1().APIServices().Get(e.ctx, DefaultSandboxAPIServerAPIService, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// patches are the patches of APIServices sent so far; each must name the
// field manager and be a merge patch.
func (e *apiServiceEnv) patches() []k8stesting.PatchActionImpl {
	e.t.Helper()
	var out []k8stesting.PatchActionImpl
	for _, a := range e.agg.Actions() {
		if manager, ok := fieldManagerOf(a); ok {
			p, isPatch := a.(k8stesting.PatchActionImpl)
			if !isPatch || p.GetPatchType() != types.MergePatchType {
				e.t.Errorf("%s %s: only merge patches are expected", describeAction(a), nameOf(a))
				continue
			}
			if manager != ControllerName {
				e.t.Errorf("%s %s: field manager %q, want %q", describeAction(a), nameOf(a), manager, ControllerName)
			}
			out = append(out, p)
		}
	}
	return out
}

// events drains the events recorded so far.
func (e *apiServiceEnv) events() []string {
	var out []string
	for {
		select {
		case ev := <-e.recorder.Events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

// testAPIService is the APIService of manifests/default, as it was shipped
// before it was verified (insecureSkipTLSVerify).
func testAPIService() *apiregistrationv1.APIService {
	return &apiregistrationv1.APIService{
		ObjectMeta: metav1.ObjectMeta{Name: DefaultSandboxAPIServerAPIService},
		Spec: apiregistrationv1.APIServiceSpec{
			Group: "subresources.fast-sandbox.io", Version: "v1alpha1",
			Service:               &apiregistrationv1.ServiceReference{Name: DefaultSandboxAPIServerService, Namespace: testSysNS},
			InsecureSkipTLSVerify: true, GroupPriorityMinimum: 100, VersionPriority: 15,
		},
	}
}

// The APIService gets the CA of the serving certificate as its caBundle
// (insecureSkipTLSVerify cleared) through a merge patch naming the field
// manager; a second look changes nothing.
func TestAPIServiceGetsTheCABundle(t *testing.T) {
	e := newAPIServiceEnv(t, k8sfake.NewClientset(), time.Now(), testAPIService())
	e.process() // the informer's add: no serving Secret yet, nothing to do
	if p := e.patches(); len(p) != 0 {
		t.Fatalf("patched before the serving certificate existed: %v", p)
	}
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.c.enqueueAPIService()
	e.process()

	caPEM := e.secret(v1alpha1.AgentCASecretName).Data[agentpki.KeyCACert]
	s := e.apiService()
	if !bytes.Equal(s.Spec.CABundle, caPEM) || s.Spec.InsecureSkipTLSVerify {
		t.Errorf("caBundle %q, insecureSkipTLSVerify %v; want the CA and false", s.Spec.CABundle, s.Spec.InsecureSkipTLSVerify)
	}
	servingLeaf(t, e.secret(v1alpha1.SandboxAPIServerServingSecretName), s.Spec.CABundle,
		DefaultSandboxAPIServerService+"."+testSysNS+".svc", time.Now())
	if s.Spec.GroupPriorityMinimum != 100 || s.Spec.Service == nil || s.Spec.Service.Name != DefaultSandboxAPIServerService {
		t.Errorf("the patch changed other fields: %+v", s.Spec)
	}
	patches := e.patches()
	if len(patches) != 1 || patches[0].GetName() != DefaultSandboxAPIServerAPIService {
		t.Fatalf("patches %v, want one of %s", patches, DefaultSandboxAPIServerAPIService)
	}
	if got := string(patches[0].GetPatch()); !strings.Contains(got, `"insecureSkipTLSVerify":null`) || !strings.Contains(got, `"caBundle":`) {
		t.Errorf("patch %s", got)
	}
	if evs := e.events(); !slices.ContainsFunc(evs, func(ev string) bool {
		return strings.HasPrefix(ev, corev1.EventTypeNormal+" "+EventUpdatedCABundle+" "+actionUpdateCABundle)
	}) {
		t.Errorf("no %s event: %v", EventUpdatedCABundle, evs)
	}

	// The informer's update (caBundle changed) is looked at: nothing to do.
	e.process()
	e.c.enqueueAPIService()
	e.process()
	if n := len(e.patches()); n != 1 {
		t.Errorf("%d patches, want still 1", n)
	}

	// Someone removes the caBundle: put back.
	s.Spec.CABundle = nil
	if _, err := e.agg.ApiregistrationV1().APIServices().Update(e.ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.process()
	if got := e.apiService().Spec.CABundle; !bytes.Equal(got, caPEM) {
		t.Errorf("caBundle not restored: %q", got)
	}
}

// An APIService that does not exist yet is no error and is not retried in
// a loop: it is looked at again when it is created.
func TestAPIServiceCreatedLater(t *testing.T) {
	e := newAPIServiceEnv(t, k8sfake.NewClientset(), time.Now())
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.c.enqueueAPIService()
	e.process()
	if n := e.k.queue.NumRequeues(DefaultSandboxAPIServerAPIService); n != 0 {
		t.Errorf("a missing APIService was requeued %d times", n)
	}
	e.clock.Step(apiServiceRetryMax)
	e.idle()
	if p := e.patches(); len(p) != 0 {
		t.Fatalf("patches without an APIService: %v", p)
	}

	// Another APIService (the informer selects by name; the fake does not).
	other := testAPIService()
	other.Name = "v1.other.example.com"
	if _, err := e.agg.ApiregistrationV1().APIServices().Create(e.ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.idle()

	if _, err := e.agg.ApiregistrationV1().APIServices().Create(e.ctx, testAPIService(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.process()
	if got := e.apiService().Spec.CABundle; !bytes.Equal(got, e.secret(v1alpha1.AgentCASecretName).Data[agentpki.KeyCACert]) {
		t.Errorf("caBundle %q, want the CA", got)
	}
	if got, err := e.agg.ApiregistrationV1().APIServices().Get(e.ctx, other.Name, metav1.GetOptions{}); err != nil || len(got.Spec.CABundle) != 0 {
		t.Errorf("another APIService was changed: %v, %v", got, err)
	}
}

// A failed patch is logged, recorded as a Warning event on the APIService
// and retried after a backoff, not at once; once it succeeds the backoff is
// forgotten.
func TestAPIServicePatchFailureIsRetried(t *testing.T) {
	e := newAPIServiceEnv(t, k8sfake.NewClientset(), time.Now(), testAPIService())
	var fail atomic.Bool
	fail.Store(true)
	e.agg.PrependReactor("patch", "apiservices", func(k8stesting.Action) (bool, runtime.Object, error) {
		if fail.Load() {
			return true, nil, apierrors.NewForbidden(apiregistrationv1.Resource("apiservices"), DefaultSandboxAPIServerAPIService,
				errors.New("no RBAC for it"))
		}
		return false, nil, nil
	})
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.process()
	if n := e.k.queue.NumRequeues(DefaultSandboxAPIServerAPIService); n != 1 {
		t.Fatalf("requeued %d times after a failure, want 1", n)
	}
	if evs := e.events(); !slices.ContainsFunc(evs, func(ev string) bool {
		return strings.HasPrefix(ev, corev1.EventTypeWarning+" "+EventFailedUpdateCABundle+" "+actionUpdateCABundle) && strings.Contains(ev, "no RBAC for it")
	}) {
		t.Errorf("no %s event: %v", EventFailedUpdateCABundle, evs)
	}
	e.idle() // not before the backoff
	e.clock.Step(apiServiceRetryBase)
	e.process()
	if n := e.k.queue.NumRequeues(DefaultSandboxAPIServerAPIService); n != 2 {
		t.Fatalf("requeued %d times after two failures, want 2", n)
	}
	e.clock.Step(apiServiceRetryBase) // the backoff doubled
	e.idle()

	fail.Store(false)
	e.clock.Step(apiServiceRetryBase)
	e.process()
	if n := e.k.queue.NumRequeues(DefaultSandboxAPIServerAPIService); n != 0 {
		t.Errorf("the backoff was not forgotten after a success: %d", n)
	}
	if got := e.apiService().Spec.CABundle; len(got) == 0 {
		t.Error("no caBundle after the retry succeeded")
	}
	if n := len(e.patches()); n != 3 {
		t.Errorf("%d patches, want 3 (two refused, one accepted)", n)
	}
}

// Across a change of CA the caBundle verifies the certificate the
// sandbox-apiserver serves throughout: first both CAs, then the new one
// only; a renewal from the same CA leaves it alone.
func TestAPIServiceCABundleFollowsANewCA(t *testing.T) {
	now := time.Now()
	oldCertPEM, certPEM, keyPEM := servingFromOldCA(t, now)
	old := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SandboxAPIServerServingSecretName, Namespace: testSysNS},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: oldCertPEM},
	}
	svc := testAPIService()
	svc.Spec.InsecureSkipTLSVerify, svc.Spec.CABundle = false, oldCertPEM
	e := newAPIServiceEnv(t, k8sfake.NewClientset(old), now, svc)
	e.process()
	if n := len(e.patches()); n != 0 {
		t.Fatalf("%d patches while the caBundle matched the Secret", n)
	}

	if err := e.c.ensureServingCredential(e.ctx); err != nil { // a new CA is made
		t.Fatal(err)
	}
	e.c.enqueueAPIService()
	e.process()
	host := DefaultSandboxAPIServerService + "." + testSysNS + ".svc"
	bundle := e.apiService().Spec.CABundle
	servingLeaf(t, old, bundle, host, now)
	servingLeaf(t, e.secret(v1alpha1.SandboxAPIServerServingSecretName), bundle, host, now)

	e.clock.Step(servingCATransition + time.Minute)
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.c.enqueueAPIService()
	e.process()
	caPEM := e.secret(v1alpha1.AgentCASecretName).Data[agentpki.KeyCACert]
	if got := e.apiService().Spec.CABundle; !bytes.Equal(got, caPEM) {
		t.Errorf("caBundle after the transition:\n%s\nwant the current CA only", got)
	}
	e.process() // the informer's update
	patches := len(e.patches())

	e.clock.Step(300 * 24 * time.Hour) // due for renewal
	before := e.secret(v1alpha1.SandboxAPIServerServingSecretName)
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(e.secret(v1alpha1.SandboxAPIServerServingSecretName).Data[agentpki.KeyCert], before.Data[agentpki.KeyCert]) {
		t.Fatal("not renewed")
	}
	e.c.enqueueAPIService()
	e.process()
	if n := len(e.patches()); n != patches {
		t.Errorf("a renewal from the same CA patched the APIService (%d patches, want %d)", n, patches)
	}
}
