package scheduler

import (
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/imageref"
)

// What a pool lets its tenants do. The pool belongs to the cluster's
// operators; these checks run before a sandbox is placed, so a refused
// sandbox never reaches an agent.

// namespaceAllowed says whether the pool's namespaceSelector selects ns. An
// absent or empty selector selects every namespace; a namespace the
// scheduler does not know (yet) is not selected by a non-empty one.
func namespaceAllowed(pool *v1alpha1.SandboxPool, ns *v1.Namespace) (bool, error) {
	sel := pool.Spec.NamespaceSelector
	if sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		return true, nil
	}
	selector, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false, fmt.Errorf("the namespaceSelector of SandboxPool %s is invalid: %w", pool.Name, err)
	}
	if ns == nil {
		return false, nil
	}
	return selector.Matches(labels.Set(ns.Labels)), nil
}

// imageAllowed says whether the pool's allowedImages admit image, compared
// in normalized form (docker.io/library/busybox:latest). An entry ending in
// "*" admits every reference that begins with what precedes it.
func imageAllowed(pool *v1alpha1.SandboxPool, image string) (bool, error) {
	if len(pool.Spec.AllowedImages) == 0 {
		return true, nil
	}
	ref, err := imageref.Normalize(image)
	if err != nil {
		return false, fmt.Errorf("image %q is not a valid reference: %w", image, err)
	}
	for _, pattern := range pool.Spec.AllowedImages {
		if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
			if strings.HasPrefix(ref, prefix) {
				return true, nil
			}
			continue
		}
		if want, err := imageref.Normalize(pattern); err == nil && want == ref {
			return true, nil
		}
	}
	return false, nil
}

// runtimeHandler is the handler a sandbox runs with: its own, the pool's
// default, or the agent's ("runc").
func runtimeHandler(sbx *v1alpha1.Sandbox, pool *v1alpha1.SandboxPool) string {
	switch {
	case sbx.Spec.RuntimeHandler != "":
		return sbx.Spec.RuntimeHandler
	case pool != nil && pool.Spec.RuntimeHandler != "":
		return pool.Spec.RuntimeHandler
	}
	return "runc"
}

// handlerAllowed says whether the pool's allowedRuntimeHandlers admit the
// sandbox's runtime handler.
func handlerAllowed(pool *v1alpha1.SandboxPool, sbx *v1alpha1.Sandbox) bool {
	allowed := pool.Spec.AllowedRuntimeHandlers
	return len(allowed) == 0 || slices.Contains(allowed, runtimeHandler(sbx, pool))
}

// refusal is why a pool refuses a sandbox for good (reason, message), or
// empty. A namespace the selector does not select is not final and is
// checked apart (the operator may label it later).
func refusal(pool *v1alpha1.SandboxPool, sbx *v1alpha1.Sandbox) (string, string) {
	ok, err := imageAllowed(pool, sbx.Spec.Image)
	switch {
	case err != nil:
		return v1alpha1.ReasonImageNotAllowed, err.Error()
	case !ok:
		return v1alpha1.ReasonImageNotAllowed, fmt.Sprintf("image %q is not one of the allowedImages of SandboxPool %s (%s)",
			sbx.Spec.Image, pool.Name, strings.Join(pool.Spec.AllowedImages, ", "))
	}
	if !handlerAllowed(pool, sbx) {
		return v1alpha1.ReasonRuntimeHandlerNotAllowed, fmt.Sprintf("runtime handler %q is not one of the allowedRuntimeHandlers of SandboxPool %s (%s)",
			runtimeHandler(sbx, pool), pool.Name, strings.Join(pool.Spec.AllowedRuntimeHandlers, ", "))
	}
	return "", ""
}

// effectiveResources are a sandbox's limits: its own, else the pool's
// defaults; pids is never unbounded.
func effectiveResources(sbx *v1alpha1.Sandbox, pool *v1alpha1.SandboxPool) v1alpha1.SandboxResources {
	r := *sbx.Spec.Resources.DeepCopy()
	if pool != nil {
		d := pool.Spec.SandboxDefaults.Resources
		if r.CPU == nil && d.CPU != nil {
			r.CPU = ptrTo(d.CPU.DeepCopy())
		}
		if r.Memory == nil && d.Memory != nil {
			r.Memory = ptrTo(d.Memory.DeepCopy())
		}
		if r.Pids == nil && d.Pids != nil {
			r.Pids = ptrTo(*d.Pids)
		}
		if r.EphemeralStorage == nil && d.EphemeralStorage != nil {
			r.EphemeralStorage = ptrTo(d.EphemeralStorage.DeepCopy())
		}
	}
	if r.Pids == nil {
		r.Pids = ptrTo(int64(v1alpha1.DefaultSandboxPidsLimit))
	}
	return r
}

func ptrTo[T any](v T) *T { return &v }

// requests are the resources a sandbox takes from its agent's capacity (its
// storage is bounded but not counted: agents report no storage capacity).
func requests(r v1alpha1.SandboxResources) v1.ResourceList {
	req := v1.ResourceList{}
	if r.CPU != nil {
		req[v1.ResourceCPU] = *r.CPU
	}
	if r.Memory != nil {
		req[v1.ResourceMemory] = *r.Memory
	}
	return req
}
