// Package scheduler places Sandboxes on agent slots by running the
// kube-scheduler framework over agents instead of nodes: every ready agent
// of a pool is a NodeInfo (allocatable = its slots, CPU and memory; image
// states = the images it reported), every Sandbox a pod-shaped request. It
// binds a sandbox by recording the placement on the Sandbox before the agent
// is told, pushes each agent's desired set of sandboxes, and turns what the
// agents report into Sandbox status.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	schedcache "k8s.io/kubernetes/pkg/scheduler/backend/cache"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/kubernetes/pkg/scheduler/metrics"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	sbxinformers "github.com/fast-sandbox/fast-sandbox/pkg/generated/informers/externalversions"
	sbxlisters "github.com/fast-sandbox/fast-sandbox/pkg/generated/listers/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/plugins/agentfit"
	"github.com/fast-sandbox/fast-sandbox/plugins/imageaffinity"
	"github.com/fast-sandbox/fast-sandbox/plugins/sandboxbinder"
)

var (
	errNoEndpoint = errors.New("the agent has no address yet")
	errNotDesired = errors.New("the sandbox is no longer desired on the agent")
)

// Options tune the scheduler.
type Options struct {
	// StatusPeriod is how often agents are asked for their status.
	StatusPeriod time.Duration
	// StatusTimeout bounds one status call.
	StatusTimeout time.Duration
	// SyncTimeout bounds one sync call (a create may pull an image).
	SyncTimeout time.Duration
	// AgentLostTimeout and AgentLostAttempts decide when an agent that does
	// not answer is lost (its sandboxes fail with AgentLost, or are placed
	// again): after at least AgentLostAttempts consecutive failed status
	// calls spanning at least AgentLostTimeout. An agent that answers that
	// it is starting (503) is not silent.
	AgentLostTimeout  time.Duration
	AgentLostAttempts int
	// SweepPeriod is how often every bound sandbox is checked against the
	// live agents.
	SweepPeriod time.Duration
	// Parallelism of the Filter and Score runs.
	Parallelism int
	// SystemNamespace is where agent Pods live, and the Secret with the
	// scheduler's client certificate (v1alpha1.SchedulerClientSecretName);
	// the scheduler takes no Pod elsewhere for an agent and reads no other
	// Secret. v1alpha1.DefaultSystemNamespace by default.
	SystemNamespace string
	// AgentTransport is the base of the transport to each agent (its TLS
	// configuration is replaced by the agent's: mutual TLS that requires
	// the agent Pod's own certificate); a default one when nil.
	AgentTransport *http.Transport
	// Clock is the source of the sync epoch; time.Now when nil.
	Clock func() time.Time
}

func (o *Options) setDefaults() {
	if o.StatusPeriod == 0 {
		o.StatusPeriod = time.Second
	}
	if o.StatusTimeout == 0 {
		o.StatusTimeout = 5 * time.Second
	}
	if o.SyncTimeout == 0 {
		o.SyncTimeout = 60 * time.Second
	}
	if o.AgentLostTimeout == 0 {
		o.AgentLostTimeout = 20 * time.Second
	}
	if o.AgentLostAttempts == 0 {
		o.AgentLostAttempts = 5
	}
	if o.SweepPeriod == 0 {
		o.SweepPeriod = 2 * time.Second
	}
	if o.Parallelism == 0 {
		o.Parallelism = 4
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.SystemNamespace == "" {
		o.SystemNamespace = v1alpha1.DefaultSystemNamespace
	}
}

// Scheduler places Sandboxes on agents and keeps agents told.
type Scheduler struct {
	opts     Options
	kube     kubernetes.Interface
	client   versioned.Interface
	cfg      *config.KubeSchedulerConfiguration
	registry frameworkruntime.Registry
	// broadcaster sends the recorder's events (events.k8s.io/v1) to the
	// API server while Run runs.
	broadcaster events.EventBroadcaster
	recorder    events.EventRecorder

	// epoch orders this scheduler's syncs after any earlier scheduler's: it
	// is taken once leading, above every epoch the agents report. revision
	// grows across all agents, so an agent forgotten and found again never
	// sees a revision it has already applied.
	epoch    atomic.Int64
	revision atomic.Int64
	// learned is closed once the scheduler knows every agent, every bound
	// sandbox and its epoch; no sync is sent before.
	learned chan struct{}

	kubeInformers informers.SharedInformerFactory
	// credsInformers watch one Secret: the scheduler's client certificate.
	credsInformers informers.SharedInformerFactory
	sbxInformers   sbxinformers.SharedInformerFactory
	sandboxes      sbxlisters.SandboxLister
	sandboxIndex   cache.Indexer
	pools          sbxlisters.SandboxPoolLister
	nodes          corelisters.NodeLister
	namespaces     corelisters.NamespaceLister
	agentPods      corelisters.PodLister // set by Run

	queue workqueue.TypedRateLimitingInterface[string]
	// loops are the goroutines Run started (per agent, sweeps, binding
	// cycles); Run waits for them before it returns.
	loops sync.WaitGroup

	mu            sync.Mutex
	ctx           context.Context
	poolStates    map[string]*poolState                  // by pool name
	agents        map[string]*agentState                 // by agent Pod namespace/name
	inflight      map[string]map[string]*inflightSandbox // agent key -> UID -> sandbox being bound
	unschedulable map[string]bool                        // sandbox keys waiting for room
	binding       map[string]bool                        // UIDs whose Bind runs: it records their outcome
	// creds are the scheduler's credentials for the agent API, nil until
	// their Secret is seen; updated in place when it changes.
	creds *agentpki.ClientCredentials
}

// poolState is one pool's agents as the framework sees them.
type poolState struct {
	cache    schedcache.Cache
	snapshot *schedcache.Snapshot
	fw       framework.Framework
	fwKey    string
	profile  string
}

// New builds a scheduler from a configuration; every profile's framework is
// built once here so that a bad configuration fails at start.
func New(ctx context.Context, kube kubernetes.Interface, client versioned.Interface, cfg *config.KubeSchedulerConfiguration, opts Options) (*Scheduler, error) {
	opts.setDefaults()
	metrics.Register()
	s := &Scheduler{
		opts: opts, kube: kube, client: client, cfg: cfg, learned: make(chan struct{}),
		kubeInformers: informers.NewSharedInformerFactory(kube, 0),
		credsInformers: informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(opts.SystemNamespace),
			informers.WithTweakListOptions(func(o *metav1ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", v1alpha1.SchedulerClientSecretName).String()
			})),
		sbxInformers: sbxinformers.NewSharedInformerFactory(client, 0),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 10*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "sandboxes"}),
		poolStates: map[string]*poolState{}, agents: map[string]*agentState{},
		inflight: map[string]map[string]*inflightSandbox{}, unschedulable: map[string]bool{}, binding: map[string]bool{},
	}
	s.broadcaster = events.NewBroadcaster(&events.EventSinkImpl{Interface: kube.EventsV1()})
	s.recorder = s.broadcaster.NewRecorder(schemeWithSandboxes(), fieldManager)

	s.registry = plugins.NewInTreeRegistry()
	for name, f := range map[string]frameworkruntime.PluginFactory{
		imageaffinity.Name: imageaffinity.New,
		agentfit.Name:      agentfit.New,
		sandboxbinder.Name: sandboxbinder.NewFactory(s),
	} {
		if err := s.registry.Register(name, f); err != nil {
			return nil, err
		}
	}
	for i := range cfg.Profiles {
		if _, err := s.newFramework(ctx, &cfg.Profiles[i], schedcache.NewEmptySnapshot()); err != nil {
			return nil, fmt.Errorf("profile %q: %w", cfg.Profiles[i].SchedulerName, err)
		}
	}

	sbxInformer := s.sbxInformers.Sandbox().V1alpha1().Sandboxes().Informer()
	if err := sbxInformer.AddIndexers(cache.Indexers{sandboxAgentIndex: indexSandboxByAgent}); err != nil {
		return nil, fmt.Errorf("adding the agent index to the Sandbox informer: %w", err)
	}
	s.sandboxIndex = sbxInformer.GetIndexer()
	s.sandboxes = s.sbxInformers.Sandbox().V1alpha1().Sandboxes().Lister()
	s.pools = s.sbxInformers.Sandbox().V1alpha1().SandboxPools().Lister()
	s.nodes = s.kubeInformers.Core().V1().Nodes().Lister()
	s.namespaces = s.kubeInformers.Core().V1().Namespaces().Lister()
	return s, nil
}

func (s *Scheduler) newFramework(ctx context.Context, profile *config.KubeSchedulerProfile, snapshot *schedcache.Snapshot) (framework.Framework, error) {
	return frameworkruntime.NewFramework(ctx, s.registry, profile,
		frameworkruntime.WithSnapshotSharedLister(snapshot),
		frameworkruntime.WithClientSet(s.kube),
		frameworkruntime.WithInformerFactory(s.kubeInformers),
		frameworkruntime.WithParallelism(s.opts.Parallelism),
		frameworkruntime.WithWaitingPods(frameworkruntime.NewWaitingPodsMap()),
		frameworkruntime.WithPodsInPreBind(frameworkruntime.NewPodsInPreBindMap()),
		frameworkruntime.WithLogger(klog.FromContext(ctx)),
	)
}

// Run starts the informers, learns what agents run, then schedules until
// ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	s.mu.Lock()
	s.ctx = ctx
	s.mu.Unlock()
	if err := s.broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		return fmt.Errorf("recording events: %w", err)
	}
	// Run returns after s.loops.Wait: every loop that records events has
	// ended by the time the broadcaster stops.
	defer s.broadcaster.Shutdown()
	agentPods := informers.NewSharedInformerFactoryWithOptions(s.kube, 0,
		informers.WithNamespace(s.opts.SystemNamespace),
		informers.WithTweakListOptions(func(o *metav1ListOptions) { o.LabelSelector = v1alpha1.LabelPoolName }))
	podInformer := agentPods.Core().V1().Pods().Informer()
	s.mu.Lock()
	s.agentPods = agentPods.Core().V1().Pods().Lister()
	s.mu.Unlock()
	sbxInformer := s.sbxInformers.Sandbox().V1alpha1().Sandboxes().Informer()
	poolInformer := s.sbxInformers.Sandbox().V1alpha1().SandboxPools().Informer()
	s.kubeInformers.Core().V1().Nodes().Informer()
	nsInformer := s.kubeInformers.Core().V1().Namespaces().Informer()
	credsInformer := s.credsInformers.Core().V1().Secrets().Informer()
	_, _ = credsInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.credentialsChanged(ctx, obj.(*v1.Secret)) },
		UpdateFunc: func(_, obj any) { s.credentialsChanged(ctx, obj.(*v1.Secret)) },
	})

	agentPods.Start(ctx.Done())
	s.kubeInformers.Start(ctx.Done())
	s.credsInformers.Start(ctx.Done())
	s.sbxInformers.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.HasSynced, sbxInformer.HasSynced, poolInformer.HasSynced) {
		return fmt.Errorf("informers did not sync")
	}
	s.kubeInformers.WaitForCacheSync(ctx.Done())
	s.credsInformers.WaitForCacheSync(ctx.Done())

	// Learn first: every agent Pod, every bound sandbox, every agent's status,
	// before anything is placed.
	for _, obj := range podInformer.GetStore().List() {
		s.upsertAgent(ctx, obj.(*v1.Pod))
	}
	for _, obj := range sbxInformer.GetStore().List() {
		s.sandboxChanged(obj.(*v1alpha1.Sandbox))
	}
	s.pollAgents(ctx)
	s.takeEpoch(ctx)
	close(s.learned)
	s.sweepLost(ctx)
	logger.Info("scheduler learned the cluster", "agents", len(s.agents), "sandboxes", len(sbxInformer.GetStore().List()), "epoch", s.epoch.Load())

	_, _ = podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.upsertAgent(ctx, obj.(*v1.Pod)) },
		UpdateFunc: func(_, obj any) { s.upsertAgent(ctx, obj.(*v1.Pod)) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if pod, ok := obj.(*v1.Pod); ok {
				s.removeAgent(ctx, pod.Namespace+"/"+pod.Name, "the agent Pod was deleted")
			}
		},
	})
	_, _ = sbxInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { s.sandboxChanged(obj.(*v1alpha1.Sandbox)) },
		UpdateFunc: func(oldObj, obj any) {
			sbx := obj.(*v1alpha1.Sandbox)
			s.sandboxChanged(sbx)
			if old, ok := oldObj.(*v1alpha1.Sandbox); ok {
				s.sandboxSpecChanged(old, sbx)
			}
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if sbx, ok := obj.(*v1alpha1.Sandbox); ok {
				s.sandboxDeleted(sbx)
			}
		},
	})
	// A namespace labelled anew may now be selected by a pool.
	_, _ = nsInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.reactivate("") },
		UpdateFunc: func(_, _ any) { s.reactivate("") },
	})
	_, _ = poolInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.poolChanged(obj.(*v1alpha1.SandboxPool)) },
		UpdateFunc: func(_, obj any) { s.poolChanged(obj.(*v1alpha1.SandboxPool)) },
	})

	s.loops.Go(func() { wait.UntilWithContext(ctx, s.sweepLost, s.opts.SweepPeriod) })
	s.loops.Go(func() { wait.UntilWithContext(ctx, s.enforceLifetimes, time.Second) })
	go func() {
		<-ctx.Done()
		s.queue.ShutDown()
	}()
	for s.processNext(ctx) {
	}
	// Every loop ends with ctx; Run returns once none is left.
	s.loops.Wait()
	return nil
}

// takeEpoch chooses the epoch of this scheduler's syncs once it leads and
// has asked every agent: above the clock and above every epoch an agent
// applied, so that neither a standby that started earlier nor a node with a
// slow clock makes the agents refuse every sync. An agent that could not be
// asked answers a stale sync with its applied epoch, and movePast moves on.
func (s *Scheduler) takeEpoch(ctx context.Context) {
	epoch := s.opts.Clock().UnixNano()
	s.mu.Lock()
	for _, a := range s.agents {
		if a.status != nil && a.status.Epoch >= epoch {
			epoch = a.status.Epoch + 1
		}
	}
	s.mu.Unlock()
	s.epoch.Store(epoch)
	klog.FromContext(ctx).V(2).Info("took the sync epoch", "epoch", epoch)
}

// movePast makes the next syncs newer than what an agent applied, after it
// refused one as stale: a later epoch (another scheduler's) is passed by
// taking the next epoch, a later revision of this epoch by jumping the
// revision past it.
func (s *Scheduler) movePast(ctx context.Context, a *agentState, appliedEpoch, appliedRevision int64) {
	for {
		epoch := s.epoch.Load()
		switch {
		case appliedEpoch > epoch:
			if !s.epoch.CompareAndSwap(epoch, appliedEpoch+1) {
				continue
			}
			klog.FromContext(ctx).Info("an agent applied a newer epoch; moving past it", "agent", a.key(), "agentEpoch", appliedEpoch, "epoch", appliedEpoch+1)
		case appliedEpoch == epoch:
			for {
				r := s.revision.Load()
				if r >= appliedRevision || s.revision.CompareAndSwap(r, appliedRevision) {
					break
				}
			}
		}
		return
	}
}

func (s *Scheduler) processNext(ctx context.Context) bool {
	key, quit := s.queue.Get()
	if quit {
		return false
	}
	defer s.queue.Done(key)
	requeue, err := s.scheduleOne(ctx, key)
	switch {
	case err != nil:
		utilruntime.HandleErrorWithContext(ctx, err, "scheduling sandbox", "sandbox", key)
		s.queue.AddRateLimited(key)
	case requeue:
		s.queue.AddRateLimited(key)
	default:
		s.queue.Forget(key)
	}
	return true
}

// scheduleOne runs one scheduling cycle for a sandbox and starts its binding
// cycle. It reports whether the sandbox must be retried later.
func (s *Scheduler) scheduleOne(ctx context.Context, key string) (bool, error) {
	logger := klog.FromContext(ctx)
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	sbx, err := s.sandboxes.Sandboxes(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if sbx.Status.Agent != "" || finished(sbx) || sbx.DeletionTimestamp != nil || s.isInflight(sbx) {
		return false, nil
	}
	pool, err := s.pools.Get(sbx.Spec.PoolName)
	if apierrors.IsNotFound(err) {
		s.markUnschedulable(ctx, sbx, v1alpha1.ReasonPoolNotFound,
			fmt.Sprintf("SandboxPool %q does not exist", sbx.Spec.PoolName))
		return true, nil
	}
	if err != nil {
		return false, err
	}
	namespace, _ := s.namespaces.Get(ns)
	if ok, err := namespaceAllowed(pool, namespace); err != nil || !ok {
		msg := fmt.Sprintf("SandboxPool %s does not admit Sandboxes of namespace %s (its namespaceSelector does not select it)", pool.Name, ns)
		if err != nil {
			msg = err.Error()
		}
		s.markUnschedulable(ctx, sbx, v1alpha1.ReasonNamespaceNotAllowed, msg)
		return false, nil
	}
	if reason, msg := refusal(pool, sbx); reason != "" {
		s.recordOutcome(ctx, sbx, api.SandboxStatus{UID: string(sbx.UID), State: api.StateFailed, Reason: reason, Message: msg}, nil)
		return false, nil
	}
	ps, err := s.poolState(ctx, pool)
	var invalid *invalidSchedulingError
	if errors.As(err, &invalid) {
		s.markUnschedulable(ctx, sbx, v1alpha1.ReasonInvalidPoolScheduling, invalid.Error())
		return false, nil
	}
	var unknown *unknownProfileError
	if errors.As(err, &unknown) {
		s.markUnschedulable(ctx, sbx, v1alpha1.ReasonUnknownSchedulerProfile, unknown.Error())
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := ps.cache.UpdateSnapshot(logger, ps.snapshot); err != nil {
		return false, fmt.Errorf("updating the snapshot of pool %s: %w", pool.Name, err)
	}
	nodes, err := ps.snapshot.NodeInfos().List()
	if err != nil {
		return false, err
	}
	if size := encodedSize(agentSpec(sbx, pool)); size > api.MaxSandboxSpecBytes {
		s.recordOutcome(ctx, sbx, api.SandboxStatus{UID: string(sbx.UID), State: api.StateFailed, Reason: v1alpha1.ReasonInvalidSpec,
			Message: fmt.Sprintf("the sandbox's spec takes %d bytes as an agent request; at most %d are accepted (shorten env, command or args)", size, api.MaxSandboxSpecBytes)}, nil)
		return false, nil
	}
	pod := sandboxPod(sbx, pool, ps.profile)
	if len(nodes) == 0 {
		s.markUnschedulable(ctx, sbx, v1alpha1.ReasonUnschedulable, "0/0 agents available: the pool has no agents yet")
		return false, nil
	}

	start := time.Now()
	state := framework.NewCycleState()
	// As kube-scheduler: a sample of the cycles records each plugin's
	// duration (scheduler_plugin_execution_duration_seconds).
	state.SetRecordPluginMetrics(rand.IntN(100) < pluginMetricsSamplePercent)
	if _, st, _ := ps.fw.RunPreFilterPlugins(ctx, state, pod); !st.IsSuccess() {
		s.markUnschedulable(ctx, sbx, v1alpha1.ReasonUnschedulable, st.Message())
		return false, nil
	}
	statuses := make([]*fwk.Status, len(nodes))
	ps.fw.Parallelizer().Until(ctx, len(nodes), func(i int) {
		statuses[i] = ps.fw.RunFilterPlugins(ctx, state, pod, nodes[i])
	}, "Filter")
	var feasible []fwk.NodeInfo
	reasons := map[string]int{}
	for i, st := range statuses {
		if st.IsSuccess() {
			feasible = append(feasible, nodes[i])
			continue
		}
		for _, r := range st.Reasons() {
			reasons[r]++
		}
	}
	if len(feasible) == 0 {
		s.markUnschedulable(ctx, sbx, v1alpha1.ReasonUnschedulable, fitMessage(len(nodes), reasons))
		return false, nil
	}
	agent := feasible[0].Node().Name
	if len(feasible) > 1 {
		if st := ps.fw.RunPreScorePlugins(ctx, state, pod, feasible); !st.IsSuccess() {
			return false, st.AsError()
		}
		scores, st := ps.fw.RunScorePlugins(ctx, state, pod, feasible)
		if !st.IsSuccess() {
			return false, st.AsError()
		}
		agent = pickBest(scores)
	}
	// Filter and Score: kube-scheduler's scheduling algorithm.
	metrics.SchedulingAlgorithmLatency.Observe(metrics.SinceInSeconds(start))
	if st := ps.fw.RunReservePluginsReserve(ctx, state, pod, agent); !st.IsSuccess() {
		ps.fw.RunReservePluginsUnreserve(ctx, state, pod, agent)
		return true, st.AsError()
	}
	_, st := ps.fw.RunPermitPlugins(ctx, state, pod, agent)
	if !st.IsWait() && !st.IsSuccess() {
		ps.fw.RunReservePluginsUnreserve(ctx, state, pod, agent)
		return true, st.AsError()
	}
	logger.V(2).Info("sandbox placed", "sandbox", key, "agent", agent, "feasible", len(feasible), "of", len(nodes), "cycle", time.Since(start))
	s.loops.Go(func() { s.bindingCycle(ctx, ps.fw, state, pod, agent, key) })
	return false, nil
}

// bindingCycle runs Permit's wait, PreBind, Bind and PostBind; on failure it
// undoes the reservation and retries the sandbox.
func (s *Scheduler) bindingCycle(ctx context.Context, fw framework.Framework, state fwk.CycleState, pod *v1.Pod, agent, key string) {
	fail := func(st *fwk.Status) {
		fw.RunReservePluginsUnreserve(ctx, state, pod, agent)
		klog.FromContext(ctx).Error(st.AsError(), "binding failed; will retry", "sandbox", key, "agent", agent)
		s.queue.AddRateLimited(key)
	}
	if st := fw.WaitOnPermit(ctx, pod); !st.IsSuccess() {
		fail(st)
		return
	}
	if st := fw.RunPreBindPlugins(ctx, state, pod, agent); !st.IsSuccess() {
		fail(st)
		return
	}
	if st := fw.RunBindPlugins(ctx, state, pod, agent); !st.IsSuccess() {
		fail(st)
		return
	}
	fw.RunPostBindPlugins(ctx, state, pod, agent)
}

// pickBest returns the agent with the highest total score; ties are broken
// at random so that equal agents share the load.
func pickBest(scores []fwk.NodePluginScores) string {
	best, count := 0, 0
	for i := range scores {
		switch {
		case i == 0 || scores[i].TotalScore > scores[best].TotalScore:
			best, count = i, 1
		case scores[i].TotalScore == scores[best].TotalScore:
			count++
			if rand.IntN(count) == 0 {
				best = i
			}
		}
	}
	return scores[best].Name
}

// fitMessage counts why agents did not fit, kube-scheduler style.
func fitMessage(total int, reasons map[string]int) string {
	parts := make([]string, 0, len(reasons))
	for r, n := range reasons {
		parts = append(parts, fmt.Sprintf("%d %s", n, r))
	}
	sort.Strings(parts)
	return fmt.Sprintf("0/%d agents available: %s", total, strings.Join(parts, ", "))
}

// poolState returns the pool's cache and framework, building or rebuilding
// the framework when the pool's profile or weights change.
func (s *Scheduler) poolState(ctx context.Context, pool *v1alpha1.SandboxPool) (*poolState, error) {
	key := pool.Name
	profileName := pool.Spec.Scheduling.SchedulerName
	if profileName == "" {
		profileName = v1alpha1.DefaultSchedulerName
	}
	fwKey := fmt.Sprint(profileName, pool.Spec.Scheduling.ScoreWeights)
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := s.ensurePoolLocked(ctx, key)
	if ps.fw != nil && ps.fwKey == fwKey {
		return ps, nil
	}
	profile, err := findProfile(s.cfg, key, profileName)
	if err != nil {
		return nil, err
	}
	fw, err := s.newFramework(ctx, withWeights(profile, pool.Spec.Scheduling.ScoreWeights), ps.snapshot)
	if err != nil {
		return nil, fmt.Errorf("building profile %q for pool %s: %w", profileName, key, err)
	}
	if err := checkWeights(key, profileName, pool.Spec.Scheduling.ScoreWeights, fw.ListPlugins().Score.Enabled); err != nil {
		return nil, err
	}
	ps.fw, ps.fwKey, ps.profile = fw, fwKey, profileName
	return ps, nil
}

func (s *Scheduler) ensurePoolLocked(ctx context.Context, key string) *poolState {
	ps, ok := s.poolStates[key]
	if !ok {
		ps = &poolState{cache: schedcache.New(ctx, nil, false, false), snapshot: schedcache.NewEmptySnapshot()}
		s.poolStates[key] = ps
	}
	return ps
}

func (s *Scheduler) poolChanged(pool *v1alpha1.SandboxPool) {
	s.reactivate(pool.Name)
}

// reactivate requeues the unschedulable sandboxes of a pool (all pools when
// pool is empty): an agent gained room, or a new one appeared.
func (s *Scheduler) reactivate(pool string) {
	s.mu.Lock()
	keys := make([]string, 0, len(s.unschedulable))
	for k := range s.unschedulable {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	for _, k := range keys {
		ns, name, _ := cache.SplitMetaNamespaceKey(k)
		if pool != "" {
			if sbx, err := s.sandboxes.Sandboxes(ns).Get(name); err == nil && sbx.Spec.PoolName != pool {
				continue
			}
		}
		s.mu.Lock()
		delete(s.unschedulable, k)
		s.mu.Unlock()
		s.queue.Forget(k)
		s.queue.Add(k)
	}
}

func (s *Scheduler) isInflight(sbx *v1alpha1.Sandbox) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.inflight {
		if _, ok := m[string(sbx.UID)]; ok {
			return true
		}
	}
	return false
}

// sandboxAgentIndex indexes Sandboxes by the agent they are bound to.
const sandboxAgentIndex = "fast-sandbox.io/agent"

func indexSandboxByAgent(obj any) ([]string, error) {
	if sbx, ok := obj.(*v1alpha1.Sandbox); ok && sbx.Status.Agent != "" {
		return []string{sbx.Status.Agent}, nil
	}
	return nil, nil
}

// sandboxesOf lists the Sandboxes bound to the agent's name (of whatever
// namespace; a.holds tells whether to this incarnation).
func (s *Scheduler) sandboxesOf(a *agentState) []*v1alpha1.Sandbox {
	objs, err := s.sandboxIndex.ByIndex(sandboxAgentIndex, a.name)
	if err != nil {
		return nil
	}
	out := make([]*v1alpha1.Sandbox, 0, len(objs))
	for _, obj := range objs {
		out = append(out, obj.(*v1alpha1.Sandbox))
	}
	return out
}

// agentKey is the key of the agent Pod named name: agents live in the
// system namespace.
func (s *Scheduler) agentKey(name string) string { return s.opts.SystemNamespace + "/" + name }
