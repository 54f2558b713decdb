package ociimage

import (
	"errors"
	"fmt"

	"github.com/distribution/reference"

	"github.com/fast-sandbox/fast-sandbox/pkg/imageref"
)

// ErrInvalidReference is wrapped by every error of Normalize.
var ErrInvalidReference = errors.New("invalid image reference")

// Normalize returns the name an image called ref gets: the form of
// pkg/imageref, the project's one normalizer, which the agent looks images
// up by and containerd's CRI plugin names them in:
//
//	busybox                -> docker.io/library/busybox:latest
//	foo/bar:1              -> docker.io/foo/bar:1
//	localhost/x:y          -> localhost/x:y
//	example.com:5000/x     -> example.com:5000/x:latest
//	busybox@sha256:<hex>   -> docker.io/library/busybox@sha256:<hex>
//	busybox:1@sha256:<hex> -> docker.io/library/busybox@sha256:<hex>
//
// Errors wrap ErrInvalidReference (and the error of
// github.com/distribution/reference that says what is wrong).
func Normalize(ref string) (string, error) {
	named, err := parse(ref)
	if err != nil {
		return "", err
	}
	return named.String(), nil
}

// parse normalizes ref (see Normalize) and returns it with its parts.
func parse(ref string) (reference.Named, error) {
	norm, err := imageref.Normalize(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidReference, err)
	}
	// Normalized, it is in the canonical form ParseNamed takes.
	named, err := reference.ParseNamed(norm)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrInvalidReference, ref, err)
	}
	// A first component with a '.' or a ':' is a registry domain; one that
	// is no host name (a_b.c/x) leaves the name without a domain.
	if reference.Domain(named) == "" {
		return nil, fmt.Errorf("%w %q: the registry domain of %q is not a host name", ErrInvalidReference, ref, named.Name())
	}
	return named, nil
}
