package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/fast-sandbox/fast-sandbox/hack/benchstat"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
)

// benchPools measures the pool controller on the local cluster: from a
// pool's creation to N agents Ready, and from a burst of sandboxes that do
// not fit to the extra agents Ready and every sandbox Running.
func benchPools(ctx context.Context, c versioned.Interface) {
	fmt.Println("\n# pool scaling (agent Pods of 250m CPU, 256Mi)")
	fmt.Println("| what | agents | time |")
	fmt.Println("|---|---|---|")
	for _, n := range []int32{1, 4} {
		name := fmt.Sprintf("bench-scale-%d", n)
		t0 := time.Now()
		createScalePool(ctx, c, name, n, n, 4)
		waitReadyAgents(ctx, c, name, n)
		fmt.Printf("| pool created → agents Ready | %d | %s |\n", n, benchstat.Millis(time.Since(t0)))
		deletePool(ctx, c, name)
	}

	// A pool of one agent with 2 slots and no buffer gets 8 sandboxes at once:
	// 6 cannot be placed until the pool grows to 4 agents.
	name := "bench-burst"
	createScalePool(ctx, c, name, 1, 4, 2)
	waitReadyAgents(ctx, c, name, 1)
	time.Sleep(2 * time.Second)
	t0 := time.Now()
	var wg sync.WaitGroup
	running := make([]time.Duration, 8)
	for i := range running {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sname := fmt.Sprintf("%s-%d-%d", name, run, i)
			w, err := c.SandboxV1alpha1().Sandboxes(*ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + sname})
			must(err)
			defer w.Stop()
			s := &v1alpha1.Sandbox{ObjectMeta: metav1.ObjectMeta{Name: sname},
				Spec: v1alpha1.SandboxSpec{PoolName: name, Image: *image, Command: []string{"sleep", "3600"},
					Resources: v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse("10m")), Memory: ptr.To(resource.MustParse("16Mi"))}}}
			_, err = c.SandboxV1alpha1().Sandboxes(*ns).Create(ctx, s, metav1.CreateOptions{})
			must(err)
			must(benchstat.WaitEvent(w, 2*time.Minute, func(obj any) bool { return obj.(*v1alpha1.Sandbox).Status.Phase == v1alpha1.SandboxRunning }))
			running[i] = time.Since(t0)
		}(i)
	}
	agentsReady := make(chan time.Duration, 1)
	go func() {
		waitReadyAgents(ctx, c, name, 4)
		agentsReady <- time.Since(t0)
	}()
	wg.Wait()
	fmt.Printf("| 8 sandboxes into 2 free slots → 3 extra agents Ready | 1 → 4 | %s |\n", benchstat.Millis(<-agentsReady))
	fmt.Printf("| 8 sandboxes into 2 free slots → all 8 Running | 1 → 4 | %s |\n", benchstat.Millis(benchstat.Percentile(running, 100)))
	for i := range running {
		_ = c.SandboxV1alpha1().Sandboxes(*ns).Delete(ctx, fmt.Sprintf("%s-%d-%d", name, run, i), metav1.DeleteOptions{})
	}
	deletePool(ctx, c, name)
}

func createScalePool(ctx context.Context, c versioned.Interface, name string, minAgents, maxAgents, slots int32) {
	pool := &v1alpha1.SandboxPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.SandboxPoolSpec{
		MinAgents: minAgents, MaxAgents: maxAgents, SlotsPerAgent: slots, ImagePullPolicy: v1alpha1.PullNever,
		ScaleDownDelaySeconds: 600,
		Agent: v1alpha1.AgentTemplate{Image: *agentImage, ImagePullPolicy: corev1.PullNever, ContainerdSocket: *socket, ContainerdRoot: *ctrdRoot,
			Resources: v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse("250m")), Memory: ptr.To(resource.MustParse("256Mi"))}},
	}}
	_, err := c.SandboxV1alpha1().SandboxPools().Create(ctx, pool, metav1.CreateOptions{})
	must(err)
}

func waitReadyAgents(ctx context.Context, c versioned.Interface, name string, n int32) {
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.SandboxV1alpha1().SandboxPools().Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.Status.ReadyAgents >= n, nil
	})
	must(err)
}
