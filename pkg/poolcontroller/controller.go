// Package poolcontroller keeps the agent Pods of every SandboxPool.
//
// The controller manages raw Pods, in the manner of the ReplicaSet
// controller: it creates and deletes the agent Pods of a pool itself,
// labelled with the pool's name and owned by the pool, so deleting the pool
// garbage-collects them. Its reconcile is level-triggered: it reads the pool,
// its Pods, its Sandboxes and the Nodes from informers, decides with the pure
// functions of sizing.go and placement.go, acts, and writes the pool status.
//
// Sizing. An agent offers SlotsPerAgent slots; a Sandbox bound to it
// (status.agent names the Pod, phase Scheduled or Running) holds one. The
// pool grows while the free slots — those of agents not yet ready counted as
// coming — fall short of the pending Sandboxes plus BufferSlots, up to
// MaxAgents (ScalingLimited=True beyond). New agents are pinned to nodes that
// cache the images pending Sandboxes ask for (targeted provisioning).
// Finished (Failed, Succeeded, evicted) agent Pods are deleted and replaced.
//
// Idle tracking. AnnotationIdleSince on a Pod says since when no Sandbox has
// been bound to it; it is written at creation, rewritten when the controller
// sees the agent become idle again (or a later Sandbox finish time) and
// removed while a Sandbox is bound. Being on the Pod, it survives a
// controller restart.
//
// Scale-down. An agent idle for ScaleDownDelaySeconds may go, never below
// MinAgents and never one with a Sandbox bound; agents on nodes under
// pressure go first, then the one idle longest. Removal takes two steps
// against a concurrent bind: the controller marks the Pod with
// v1alpha1.AnnotationDraining (value: the RFC 3339 time of the mark), which tells the
// scheduler to place nothing there; at least DrainGrace later it deletes the
// Pod if it still sees no Sandbox bound, and otherwise removes the mark.
//
// Node cleanup. Agent Pods carry v1alpha1.FinalizerAgentPodCleanup; once
// one stops, a cleanup Pod on its node removes its containers before the
// finalizer goes (cleanup.go). This goes on for the Pods of a pool that is
// being deleted or gone.
//
// The controller never writes Sandboxes; Sandboxes of a pool that does not
// exist are left to the scheduler, which reports PoolNotFound.
package poolcontroller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/storage/names"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	sandboxscheme "github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned/scheme"
	sandboxinformers "github.com/fast-sandbox/fast-sandbox/pkg/generated/informers/externalversions/sandbox/v1alpha1"
	sandboxlisters "github.com/fast-sandbox/fast-sandbox/pkg/generated/listers/sandbox/v1alpha1"
)

// ControllerName is the reporting controller of its events, the field
// manager of its writes and the workqueue name.
const ControllerName = "fast-sandbox-pool-controller"

// Event reasons.
const (
	EventCreatedAgent   = "CreatedAgent"
	EventDeletedAgent   = "DeletedAgent"
	EventDrainingAgent  = "DrainingAgent"
	EventDrainCancelled = "DrainCancelled"
	EventFailedCreate   = "FailedCreate"
	EventFailedDelete   = "FailedDelete"
	EventScalingLimited = "ScalingLimited"
)

// Event actions (events.k8s.io/v1): what the controller did, or failed to
// do, when it recorded an event.
const (
	actionCreateAgent      = "CreateAgent"
	actionDeleteAgent      = "DeleteAgent"
	actionDrainAgent       = "DrainAgent"
	actionCancelDrain      = "CancelDrain"
	actionScale            = "Scale"
	actionIssueCertificate = "IssueCertificate"
	actionCleanupNode      = "CleanupNode"
	actionReleaseAgentPod  = "ReleaseAgentPod"
)

// Defaults of Options.
const (
	DefaultDrainGrace               = 2 * time.Second
	DefaultExpectationsTimeout      = 5 * time.Minute
	DefaultOrphanedCertificateGrace = time.Minute
)

const sandboxPoolIndex = "fast-sandbox.io/pool"

func init() {
	// Events name SandboxPools, so the event scheme must know them.
	utilruntime.Must(sandboxscheme.AddToScheme(scheme.Scheme))
}

// Options tune a Controller; the zero value is fine.
type Options struct {
	// Clock is the controller's clock; the real one by default.
	Clock clock.WithTicker
	// DrainGrace is how long an agent stays marked draining before it is
	// deleted; DefaultDrainGrace by default.
	DrainGrace time.Duration
	// ExpectationsTimeout bounds how long the controller waits for its Pod
	// informer to show the Pods it created or deleted.
	ExpectationsTimeout time.Duration
	// OrphanedCertificateGrace is how long an agent's certificate Secret
	// may be seen without its Pod before it is deleted (the Secret is made
	// just before the Pod, which the informer may show later);
	// DefaultOrphanedCertificateGrace by default.
	OrphanedCertificateGrace time.Duration
	// SystemNamespace is where agent Pods, cleanup Pods and Secrets live;
	// v1alpha1.DefaultSystemNamespace by default. The Pod and Secret
	// informers need show no other namespace.
	SystemNamespace string
	// CleanupPods is an informer of the cleanup Pods (those labelled
	// v1alpha1.LabelCleanupAgentPodUID), which carry no pool label and so
	// are not in a Pod informer narrowed to agent Pods. It must not have been
	// started yet. When nil, the controller makes one over every namespace
	// and runs it itself.
	CleanupPods coreinformers.PodInformer
}

// Controller keeps the agent Pods of SandboxPools.
type Controller struct {
	kubeClient    kubernetes.Interface
	sandboxClient versioned.Interface

	podLister     corelisters.PodLister
	cleanupLister corelisters.PodLister
	// cleanupInformers, when set, is the controller's own, run by Run.
	cleanupInformers informers.SharedInformerFactory
	nodeLister       corelisters.NodeLister
	secretLister     corelisters.SecretLister
	poolLister       sandboxlisters.SandboxPoolLister
	sandboxIndex     cache.Indexer
	synced           []cache.InformerSynced

	queue workqueue.TypedRateLimitingInterface[string]
	// broadcaster sends the recorder's events to the API server while Run
	// runs.
	broadcaster  events.EventBroadcaster
	recorder     events.EventRecorder
	expectations *expectations
	clock        clock.WithTicker
	drainGrace   time.Duration
	// namespace is the system namespace, home of every agent Pod.
	namespace string
	creds     credentials
	certGrace time.Duration
}

// NewController makes a pool controller. podInformer and secretInformer may
// be narrowed to objects labelled fast-sandbox.io/pool-name; the informers
// must not have been started yet (the controller adds an index to the
// Sandbox informer). Its events (events.k8s.io/v1) are sent while Run runs.
func NewController(ctx context.Context, kubeClient kubernetes.Interface, sandboxClient versioned.Interface,
	podInformer coreinformers.PodInformer, nodeInformer coreinformers.NodeInformer, secretInformer coreinformers.SecretInformer,
	poolInformer sandboxinformers.SandboxPoolInformer, sandboxInformer sandboxinformers.SandboxInformer, opts Options,
) (*Controller, error) {
	logger := klog.FromContext(ctx)
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.DrainGrace <= 0 {
		opts.DrainGrace = DefaultDrainGrace
	}
	if opts.ExpectationsTimeout <= 0 {
		opts.ExpectationsTimeout = DefaultExpectationsTimeout
	}
	if opts.OrphanedCertificateGrace <= 0 {
		opts.OrphanedCertificateGrace = DefaultOrphanedCertificateGrace
	}
	if opts.SystemNamespace == "" {
		opts.SystemNamespace = v1alpha1.DefaultSystemNamespace
	}

	var cleanupInformers informers.SharedInformerFactory
	if opts.CleanupPods == nil {
		cleanupInformers = informers.NewSharedInformerFactoryWithOptions(kubeClient, 0,
			informers.WithNamespace(opts.SystemNamespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = v1alpha1.LabelCleanupAgentPodUID }))
		opts.CleanupPods = cleanupInformers.Core().V1().Pods()
	}

	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: kubeClient.EventsV1()})

	c := &Controller{
		kubeClient:       kubeClient,
		sandboxClient:    sandboxClient,
		podLister:        podInformer.Lister(),
		cleanupLister:    opts.CleanupPods.Lister(),
		cleanupInformers: cleanupInformers,
		nodeLister:       nodeInformer.Lister(),
		secretLister:     secretInformer.Lister(),
		poolLister:       poolInformer.Lister(),
		sandboxIndex:     sandboxInformer.Informer().GetIndexer(),
		synced: []cache.InformerSynced{
			podInformer.Informer().HasSynced, nodeInformer.Informer().HasSynced, secretInformer.Informer().HasSynced,
			poolInformer.Informer().HasSynced, sandboxInformer.Informer().HasSynced,
			opts.CleanupPods.Informer().HasSynced,
		},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: ControllerName, Clock: opts.Clock}),
		broadcaster:  broadcaster,
		recorder:     broadcaster.NewRecorder(scheme.Scheme, ControllerName),
		expectations: newExpectations(opts.Clock, opts.ExpectationsTimeout),
		clock:        opts.Clock,
		drainGrace:   opts.DrainGrace,
		namespace:    opts.SystemNamespace,
		certGrace:    opts.OrphanedCertificateGrace,
	}

	if err := sandboxInformer.Informer().AddIndexers(cache.Indexers{sandboxPoolIndex: indexSandboxByPool}); err != nil {
		return nil, fmt.Errorf("adding the pool index to the Sandbox informer: %w", err)
	}
	handlers := []struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		{poolInformer.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.enqueuePool,
			UpdateFunc: func(_, obj any) { c.enqueuePool(obj) },
			DeleteFunc: c.deletePool,
		}},
		{podInformer.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.addPod(logger, obj) },
			UpdateFunc: func(old, cur any) { c.updatePod(logger, old, cur) },
			DeleteFunc: func(obj any) { c.deletePod(logger, obj) },
		}},
		{sandboxInformer.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.enqueueSandboxPool,
			UpdateFunc: func(_, cur any) { c.enqueueSandboxPool(cur) },
			DeleteFunc: c.enqueueSandboxPool,
		}},
		{nodeInformer.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { c.enqueueAllPools(logger) },
			UpdateFunc: func(old, cur any) { c.updateNode(logger, old, cur) },
			DeleteFunc: func(any) { c.enqueueAllPools(logger) },
		}},
		{secretInformer.Informer(), cache.ResourceEventHandlerFuncs{
			DeleteFunc: c.deleteSecret,
		}},
		{opts.CleanupPods.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.enqueueCleanupPod,
			UpdateFunc: func(_, cur any) { c.enqueueCleanupPod(cur) },
			DeleteFunc: c.enqueueCleanupPod,
		}},
	}
	for _, h := range handlers {
		if _, err := h.informer.AddEventHandler(h.handler); err != nil {
			return nil, fmt.Errorf("adding an event handler: %w", err)
		}
	}
	return c, nil
}

// Run waits for the informers' caches, then reconciles pools with workers
// goroutines until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) error {
	defer utilruntime.HandleCrashWithContext(ctx)
	defer c.queue.ShutDown()
	logger := klog.FromContext(ctx)
	logger.Info("Starting pool controller", "workers", workers)
	defer logger.Info("Shutting down pool controller")

	// Events go out while the controller runs; Shutdown, when Run returns,
	// stops the broadcaster's goroutines (an event a worker still records
	// then is dropped).
	if _, err := c.broadcaster.StartLogging(logger.V(3)); err != nil {
		return fmt.Errorf("logging events: %w", err)
	}
	if err := c.broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		return fmt.Errorf("recording events: %w", err)
	}
	defer c.broadcaster.Shutdown()
	if c.cleanupInformers != nil {
		c.cleanupInformers.Start(ctx.Done())
		defer c.cleanupInformers.Shutdown()
	}

	if !cache.WaitForNamedCacheSyncWithContext(ctx, c.synced...) {
		return errors.New("the informers' caches did not sync")
	}
	go c.runCredentials(ctx)
	for range workers {
		go wait.UntilWithContext(ctx, c.runWorker, time.Second)
	}
	<-ctx.Done()
	return nil
}

func (c *Controller) runWorker(ctx context.Context) {
	for c.processNextWorkItem(ctx) {
	}
}

func (c *Controller) processNextWorkItem(ctx context.Context) bool {
	key, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(key)

	start := c.clock.Now()
	requeueAfter, err := c.syncPool(ctx, key)
	observeReconcile(err, c.clock.Since(start))
	if err != nil {
		utilruntime.HandleErrorWithContext(ctx, err, "Syncing SandboxPool failed; requeuing", "pool", key)
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	if requeueAfter > 0 {
		c.queue.AddAfter(key, requeueAfter)
	}
	return true
}

// syncPool reconciles one pool; the duration, when positive, is when it
// should run again even if nothing changes.
func (c *Controller) syncPool(ctx context.Context, key string) (time.Duration, error) {
	logger := klog.FromContext(ctx).WithValues("pool", key)
	ctx = klog.NewContext(ctx, logger)
	start := c.clock.Now()
	defer func() { logger.V(4).Info("Finished syncing pool", "duration", c.clock.Since(start)) }()

	// Pools are cluster-scoped: the key is the name.
	name := key
	pool, err := c.poolLister.Get(name)
	if apierrors.IsNotFound(err) {
		pool, err = nil, nil
	}
	if err != nil {
		return 0, fmt.Errorf("getting pool %s: %w", key, err)
	}

	// Ask before listing: a Pod the informer shows after the list must not
	// count as seen.
	needsManage := c.expectations.satisfied(key)
	pods, err := c.podLister.Pods(c.namespace).List(labels.SelectorFromSet(labels.Set{v1alpha1.LabelPoolName: name}))
	if err != nil {
		return 0, fmt.Errorf("listing the agent Pods of %s: %w", key, err)
	}
	// The node cleanup goes on whatever becomes of the pool.
	var cleanupRequeue time.Duration
	var cleanupErr error
	finalized := slices.ContainsFunc(pods, func(p *corev1.Pod) bool { return ownerKey(p) == key && hasCleanupFinalizer(p) })
	switch {
	case needsManage:
		cleanupRequeue, cleanupErr = c.syncCleanups(ctx, key, c.namespace, name, pool, pods)
	case finalized:
		cleanupRequeue = cleanupRecheck
	}
	if pool == nil {
		// The garbage collector removes the agent Pods and the Secret.
		logger.V(4).Info("Pool is gone")
		if !finalized {
			c.expectations.forget(key)
		}
		return cleanupRequeue, cleanupErr
	}
	if pool.DeletionTimestamp != nil {
		return cleanupRequeue, cleanupErr
	}
	var active, finished []*corev1.Pod
	for _, pod := range pods {
		switch {
		case !metav1.IsControlledBy(pod, pool), pod.DeletionTimestamp != nil:
		case podFinished(pod):
			finished = append(finished, pod)
		default:
			active = append(active, pod)
		}
	}
	objs, err := c.sandboxIndex.ByIndex(sandboxPoolIndex, key)
	if err != nil {
		return 0, fmt.Errorf("listing the Sandboxes of %s: %w", key, err)
	}
	sandboxes := make([]*v1alpha1.Sandbox, 0, len(objs))
	for _, obj := range objs {
		sandboxes = append(sandboxes, obj.(*v1alpha1.Sandbox))
	}

	now := c.clock.Now()
	uids := make(map[string]string, len(active))
	for _, pod := range active {
		uids[pod.Name] = string(pod.UID)
	}
	use := CountSlotUse(sandboxes, uids)
	agents := make([]Agent, len(active))
	for i, pod := range active {
		var node *corev1.Node
		if pod.Spec.NodeName != "" {
			node, _ = c.nodeLister.Get(pod.Spec.NodeName)
		}
		agents[i] = AgentFromPod(pod, use, node, now)
	}
	plan := MakePlan(PlanInput{
		MinAgents: pool.Spec.MinAgents, MaxAgents: pool.Spec.MaxAgents,
		SlotsPerAgent: pool.Spec.SlotsPerAgent, BufferSlots: pool.Spec.BufferSlots,
		Pending:        int32(len(use.PendingImages)),
		Agents:         agents,
		ScaleDownDelay: time.Duration(pool.Spec.ScaleDownDelaySeconds) * time.Second,
		DrainGrace:     c.drainGrace,
		Now:            now,
	})
	logger.V(4).Info("Planned", "agents", len(active), "finished", len(finished), "pending", len(use.PendingImages),
		"desired", plan.Desired, "create", plan.Create, "drain", plan.Drain, "undrain", plan.Undrain, "delete", plan.Delete)

	errs := []error{cleanupErr}
	var secretsRequeue time.Duration
	if needsManage {
		// Certificates first: the Pods about to be created get theirs in
		// createAgents, and are in the list by the next time this runs.
		var err error
		secretsRequeue, err = c.syncAgentSecrets(ctx, pool, pods)
		errs = append(errs, err, c.manage(ctx, pool, active, finished, agents, use, plan))
	} else {
		logger.V(4).Info("Waiting for the informer to show earlier creations and deletions")
	}
	if plan.Limited && !meta.IsStatusConditionTrue(pool.Status.Conditions, v1alpha1.PoolConditionScalingLimited) {
		c.event(pool, nil, corev1.EventTypeWarning, EventScalingLimited, actionScale,
			"The pool wants %d agents but maxAgents is %d", plan.Wanted, pool.Spec.MaxAgents)
	}
	errs = append(errs, c.updateStatus(ctx, pool, computeStatus(pool, agents, plan, now)))
	requeue := plan.RequeueAfter
	for _, d := range []time.Duration{cleanupRequeue, secretsRequeue} {
		if d > 0 && (requeue <= 0 || d < requeue) {
			requeue = d
		}
	}
	return requeue, errors.Join(errs...)
}

// manage acts on the plan: replace finished agents, keep the idle and
// draining marks, delete drained agents and create new ones.
func (c *Controller) manage(ctx context.Context, pool *v1alpha1.SandboxPool, active, finished []*corev1.Pod,
	agents []Agent, use SlotUse, plan Plan,
) error {
	var errs []error
	for _, pod := range finished {
		msg := fmt.Sprintf("Deleted agent Pod %s: it is %s", pod.Name, pod.Status.Phase)
		if pod.Status.Reason != "" {
			msg += " (" + pod.Status.Reason + ")"
		}
		errs = append(errs, c.deletePodNow(ctx, pool, pod, msg+"; replacing it"))
	}

	drain, undrain, del := toSet(plan.Drain), toSet(plan.Undrain), toSet(plan.Delete)
	for i, pod := range active {
		a := agents[i]
		if del[pod.Name] {
			errs = append(errs, c.deletePodNow(ctx, pool, pod, fmt.Sprintf("Deleted agent Pod %s: idle since %s, drained",
				pod.Name, a.IdleSince.UTC().Format(time.RFC3339))))
			continue
		}
		errs = append(errs, c.syncAnnotations(ctx, pool, pod, a, drain[pod.Name], undrain[pod.Name]),
			c.ensureFinalizer(ctx, pod))
	}

	if plan.Create > 0 {
		errs = append(errs, c.createAgents(ctx, pool, int(plan.Create), use.PendingImages))
	}
	return errors.Join(errs...)
}

// createAgents creates n agent Pods, pinned where targeted provisioning finds
// nodes caching the pending Sandboxes' images.
func (c *Controller) createAgents(ctx context.Context, pool *v1alpha1.SandboxPool, n int, pendingImages []string) error {
	logger := klog.FromContext(ctx)
	key := poolKey(pool)
	nodes, err := c.nodeLister.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("listing nodes: %w", err)
	}
	agentPods, err := c.podLister.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("listing agent Pods: %w", err)
	}
	shape := AgentShape{
		NodeSelector: pool.Spec.Agent.NodeSelector, Tolerations: pool.Spec.Agent.Tolerations,
		SlotsPerAgent: pool.Spec.SlotsPerAgent,
	}
	if q := pool.Spec.Agent.Resources.CPU; q != nil {
		shape.CPUMillis = q.MilliValue()
	}
	if q := pool.Spec.Agent.Resources.Memory; q != nil {
		shape.MemoryBytes = q.Value()
	}
	picks := ChooseNodes(n, pendingImages, nodes, agentPods, shape)
	hostnames := map[string]string{}
	for _, node := range nodes {
		hostnames[node.Name] = nodeHostname(node)
	}

	c.expectations.expectCreations(key, n)
	now := c.clock.Now().UTC().Format(time.RFC3339)
	for i, node := range picks {
		// The Pod's name is chosen here, not by the API server, so that its
		// certificate can name it before it exists.
		pod := AgentPod(pool, c.namespace, names.SimpleNameGenerator.GenerateName(pool.Name+"-agent-"), hostnames[node])
		pod.Annotations = map[string]string{AnnotationIdleSince: now}
		err := c.issueAgentSecret(ctx, pool, pod.Name)
		var created *corev1.Pod
		if err == nil {
			created, err = c.kubeClient.CoreV1().Pods(c.namespace).Create(ctx, pod, metav1.CreateOptions{FieldManager: ControllerName})
			if err != nil {
				c.deleteAgentSecret(ctx, pod.Name) // no Pod will mount it
			}
		}
		if err != nil {
			// The rest will not be created in this round either; their
			// creations will never show.
			for range n - i {
				c.expectations.creationObserved(key)
			}
			if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
				return nil
			}
			c.event(pool, nil, corev1.EventTypeWarning, EventFailedCreate, actionCreateAgent, "Creating an agent Pod failed: %v", err)
			return fmt.Errorf("creating an agent Pod for %s: %w", key, err)
		}
		where := "on any node"
		if node != "" {
			where = "pinned to node " + node
		}
		logger.V(2).Info("Created agent Pod", "pod", klog.KObj(created), "node", node)
		c.event(pool, created, corev1.EventTypeNormal, EventCreatedAgent, actionCreateAgent, "Created agent Pod %s %s", created.Name, where)
	}
	return nil
}

// deletePodNow deletes an agent Pod, only the one it looked at (UID precondition).
func (c *Controller) deletePodNow(ctx context.Context, pool *v1alpha1.SandboxPool, pod *corev1.Pod, why string) error {
	key := poolKey(pool)
	c.expectations.expectDeletion(key, string(pod.UID))
	err := c.kubeClient.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) {
		c.expectations.deletionObserved(key, string(pod.UID))
		c.event(pool, pod, corev1.EventTypeWarning, EventFailedDelete, actionDeleteAgent, "Deleting agent Pod %s failed: %v", pod.Name, err)
		return fmt.Errorf("deleting agent Pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("Deleted agent Pod", "pod", klog.KObj(pod), "reason", why)
	c.event(pool, pod, corev1.EventTypeNormal, EventDeletedAgent, actionDeleteAgent, "%s", why)
	return nil
}

// syncAnnotations keeps the idle-since and draining marks of one agent Pod.
func (c *Controller) syncAnnotations(ctx context.Context, pool *v1alpha1.SandboxPool, pod *corev1.Pod, a Agent, drain, undrain bool) error {
	patch := map[string]any{}
	idle, hasIdle := parseTime(pod.Annotations, AnnotationIdleSince)
	switch {
	case a.Bound > 0 && hasIdle:
		patch[AnnotationIdleSince] = nil
	case a.Bound == 0 && (!hasIdle || idle.Before(a.IdleSince.Truncate(time.Second))):
		patch[AnnotationIdleSince] = a.IdleSince.UTC().Format(time.RFC3339)
	}
	switch {
	case drain:
		patch[v1alpha1.AnnotationDraining] = c.clock.Now().UTC().Format(time.RFC3339Nano)
	case undrain:
		patch[v1alpha1.AnnotationDraining] = nil
	}
	if len(patch) == 0 {
		return nil
	}
	data, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": patch}})
	if err != nil {
		return err
	}
	if _, err := c.kubeClient.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, data, metav1.PatchOptions{FieldManager: ControllerName}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("annotating agent Pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	switch {
	case drain:
		c.event(pool, pod, corev1.EventTypeNormal, EventDrainingAgent, actionDrainAgent,
			"Draining idle agent Pod %s (idle since %s); it is deleted unless a Sandbox is bound to it first",
			pod.Name, a.IdleSince.UTC().Format(time.RFC3339))
	case undrain:
		c.event(pool, pod, corev1.EventTypeNormal, EventDrainCancelled, actionCancelDrain, "Agent Pod %s is needed again; no longer draining", pod.Name)
	}
	return nil
}

func (c *Controller) enqueuePool(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	c.queue.Add(key)
}

func (c *Controller) deletePool(obj any) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		c.expectations.forget(key)
	}
	c.enqueuePool(obj)
}

func (c *Controller) enqueueAllPools(logger klog.Logger) {
	pools, err := c.poolLister.List(labels.Everything())
	if err != nil {
		logger.Error(err, "Listing pools")
		return
	}
	for _, pool := range pools {
		c.queue.Add(poolKey(pool))
	}
}

// ownerKey is the key (the name) of the pool controlling obj, or "". The
// informers show only the system namespace, where only the controller
// creates Pods and Secrets.
func ownerKey(obj metav1.Object) string {
	ref := metav1.GetControllerOf(obj)
	if ref == nil || ref.Kind != poolGVK.Kind || ref.APIVersion != poolGVK.GroupVersion().String() {
		return ""
	}
	return ref.Name
}

func (c *Controller) addPod(logger klog.Logger, obj any) {
	pod := obj.(*corev1.Pod)
	key := ownerKey(pod)
	if key == "" {
		return
	}
	if pod.DeletionTimestamp != nil {
		// Seen for the first time already going (e.g. after a restart).
		c.expectations.deletionObserved(key, string(pod.UID))
	} else {
		c.expectations.creationObserved(key)
	}
	logger.V(4).Info("Agent Pod added", "pod", klog.KObj(pod))
	c.queue.Add(key)
}

func (c *Controller) updatePod(logger klog.Logger, old, cur any) {
	oldPod, curPod := old.(*corev1.Pod), cur.(*corev1.Pod)
	if oldPod.ResourceVersion == curPod.ResourceVersion {
		return // a resync; the pools resync by themselves
	}
	key := ownerKey(curPod)
	if key == "" {
		return
	}
	if curPod.DeletionTimestamp != nil {
		// A graceful deletion shows as an update first.
		c.expectations.deletionObserved(key, string(curPod.UID))
	}
	if !hasCleanupFinalizer(curPod) {
		c.expectations.releaseObserved(key, string(curPod.UID))
	}
	logger.V(5).Info("Agent Pod updated", "pod", klog.KObj(curPod))
	c.queue.Add(key)
}

func (c *Controller) deletePod(logger klog.Logger, obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		tombstone, ok := obj.(cache.DeletedFinalStateUnknown)
		if !ok {
			utilruntime.HandleError(fmt.Errorf("unexpected object in a Pod delete event: %#v", obj))
			return
		}
		if pod, ok = tombstone.Obj.(*corev1.Pod); !ok {
			utilruntime.HandleError(fmt.Errorf("unexpected object in a Pod tombstone: %#v", tombstone.Obj))
			return
		}
	}
	key := ownerKey(pod)
	if key == "" {
		return
	}
	c.expectations.deletionObserved(key, string(pod.UID))
	c.expectations.releaseObserved(key, string(pod.UID))
	logger.V(4).Info("Agent Pod deleted", "pod", klog.KObj(pod))
	c.queue.Add(key)
}

func (c *Controller) enqueueSandboxPool(obj any) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	if s, ok := obj.(*v1alpha1.Sandbox); ok {
		c.queue.Add(s.Spec.PoolName)
	}
}

// enqueueCleanupPod enqueues the pool of a cleanup Pod, by its label: the
// pool may be gone.
func (c *Controller) enqueueCleanupPod(obj any) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	if p, ok := obj.(*corev1.Pod); ok && p.Labels[v1alpha1.LabelCleanupPoolName] != "" {
		c.queue.Add(p.Labels[v1alpha1.LabelCleanupPoolName])
	}
}

func (c *Controller) deleteSecret(obj any) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	if s, ok := obj.(*corev1.Secret); ok {
		if key := ownerKey(s); key != "" {
			c.queue.Add(key)
		}
	}
}

// updateNode enqueues every pool when something the controller reads of the
// node changed: its images, readiness, pressure, schedulability or room.
func (c *Controller) updateNode(logger klog.Logger, old, cur any) {
	o, n := old.(*corev1.Node), cur.(*corev1.Node)
	if o.ResourceVersion == n.ResourceVersion {
		return
	}
	condStatus := func(node *corev1.Node) map[corev1.NodeConditionType]corev1.ConditionStatus {
		m := map[corev1.NodeConditionType]corev1.ConditionStatus{}
		for _, c := range node.Status.Conditions {
			m[c.Type] = c.Status
		}
		return m
	}
	if equality.Semantic.DeepEqual(o.Labels, n.Labels) && o.Spec.Unschedulable == n.Spec.Unschedulable &&
		equality.Semantic.DeepEqual(o.Spec.Taints, n.Spec.Taints) &&
		equality.Semantic.DeepEqual(o.Status.Allocatable, n.Status.Allocatable) &&
		equality.Semantic.DeepEqual(o.Status.Images, n.Status.Images) &&
		equality.Semantic.DeepEqual(condStatus(o), condStatus(n)) {
		return
	}
	c.enqueueAllPools(logger)
}

func indexSandboxByPool(obj any) ([]string, error) {
	s, ok := obj.(*v1alpha1.Sandbox)
	if !ok {
		return nil, nil
	}
	return []string{s.Spec.PoolName}, nil
}

// poolKey is the workqueue key of a pool: its name (pools are cluster-scoped).
func poolKey(pool *v1alpha1.SandboxPool) string { return pool.Name }

func toSet(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// noteLimit is the most an events.k8s.io/v1 note may hold; the API server
// refuses a longer one.
const noteLimit = 1024

// event records an event about regarding (the pool, or an agent Pod once the
// pool is gone); related, when not nil, is the object acted on. A note too
// long for the API (an error text can be) is cut.
func (c *Controller) event(regarding, related runtime.Object, eventType, reason, action, note string, args ...any) {
	c.recorder.Eventf(regarding, related, eventType, reason, action, "%s", truncateNote(fmt.Sprintf(note, args...)))
}

// truncateNote cuts a note to noteLimit bytes, on a character boundary.
func truncateNote(note string) string {
	if len(note) <= noteLimit {
		return note
	}
	const ellipsis = "..."
	cut := noteLimit - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(note[cut]) {
		cut--
	}
	return note[:cut] + ellipsis
}
