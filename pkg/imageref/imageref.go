// Package imageref is the one normalizer of image references: the scheduler,
// its plugins, the pool controller and the agent compare images in the form
// it gives, so "busybox" and "docker.io/library/busybox:latest" are the same
// image everywhere.
package imageref

import (
	"fmt"

	"github.com/distribution/reference"
)

// Normalize returns the canonical form of an image reference: "python:3.9"
// becomes "docker.io/library/python:3.9", "busybox" becomes
// "docker.io/library/busybox:latest"; a reference by digest keeps its
// digest.
func Normalize(ref string) (string, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	return named.String(), nil
}

// NormalizeOrKeep is Normalize for comparisons only: a reference that does
// not parse is returned as it is (it then equals only itself).
func NormalizeOrKeep(ref string) string {
	if n, err := Normalize(ref); err == nil {
		return n
	}
	return ref
}
