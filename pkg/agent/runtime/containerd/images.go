package containerd

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/client"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
)

// imageCache remembers the size of each image by digest: computing it reads
// the manifest from the content store, and status is asked for often.
type imageCache struct {
	mu    sync.Mutex
	sizes map[string]int64
}

func (ic *imageCache) list(ctx context.Context, c *client.Client) ([]api.Image, error) {
	imgs, err := c.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	byDigest := map[string]*api.Image{}
	for _, img := range imgs {
		d := img.Target.Digest.String()
		entry, ok := byDigest[d]
		if !ok {
			size, err := ic.size(d, func() (int64, error) {
				return client.NewImage(c, img).Size(ctx)
			})
			if err != nil {
				continue // content missing (e.g. a partial pull): not usable
			}
			entry = &api.Image{Digest: d, Size: size}
			byDigest[d] = entry
		}
		// The CRI also names images by their bare config digest; that is no reference.
		if !strings.HasPrefix(img.Name, "sha256:") {
			entry.Names = append(entry.Names, img.Name)
		}
	}
	out := make([]api.Image, 0, len(byDigest))
	for _, e := range byDigest {
		if len(e.Names) == 0 {
			continue
		}
		sort.Strings(e.Names)
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Names[0] < out[j].Names[0] })
	return out, nil
}

func (ic *imageCache) size(digest string, compute func() (int64, error)) (int64, error) {
	ic.mu.Lock()
	if s, ok := ic.sizes[digest]; ok {
		ic.mu.Unlock()
		return s, nil
	}
	ic.mu.Unlock()
	s, err := compute()
	if err != nil {
		return 0, err
	}
	ic.mu.Lock()
	if ic.sizes == nil {
		ic.sizes = map[string]int64{}
	}
	ic.sizes[digest] = s
	ic.mu.Unlock()
	return s, nil
}
