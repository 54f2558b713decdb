package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// ClientConfig loads the API client configuration of a control-plane
// binary: the kubeconfig file, or the in-cluster configuration when empty.
func ClientConfig(kubeconfig string, qps float32, burst int, userAgent string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("loading the client configuration: %w", err)
	}
	cfg.QPS, cfg.Burst = qps, burst
	return rest.AddUserAgent(cfg, userAgent), nil
}

// Leader configures leader election with a Lease.
type Leader struct {
	Enabled   bool
	Namespace string
	Name      string
	// Health, when set, fails /healthz when the lease is held but not renewed.
	Health *leaderelection.HealthzAdaptor
}

// RunAsLeader runs fn while holding the lease (or at once when leader
// election is off). Losing the lease ends fn's context and returns an error,
// so the process restarts instead of running twice.
func RunAsLeader(ctx context.Context, logger logr.Logger, kube kubernetes.Interface, l Leader, fn func(context.Context) error) error {
	if !l.Enabled {
		return fn(ctx)
	}
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("getting the hostname for the leader election identity: %w", err)
	}
	id := host + "_" + string(uuid.NewUUID())
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: l.Namespace, Name: l.Name},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	leCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	leaderelection.RunOrDie(leCtx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            l.Name,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true,
		WatchDog:        l.Health,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				logger.Info("Became the leader", "identity", id)
				done <- fn(ctx)
				cancel()
			},
			OnStoppedLeading: func() { logger.Info("No longer the leader", "identity", id) },
			OnNewLeader: func(identity string) {
				if identity != id {
					logger.Info("Another instance leads", "leader", identity)
				}
			},
		},
	})
	select {
	case err := <-done:
		return err
	default:
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("lost the leader election Lease")
}

// Serve serves handler on addr until ctx ends.
func Serve(ctx context.Context, logger logr.Logger, addr string, handler http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error(err, "Serving failed", "address", addr)
		}
	}()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	return nil
}

// HealthzHandler answers ok unless the leader lease is held but stale.
func HealthzHandler(leader *leaderelection.HealthzAdaptor) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if leader != nil {
			if err := leader.Check(r); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		_, _ = w.Write([]byte("ok"))
	}
}
