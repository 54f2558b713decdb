package ociimage

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// ErrInvalidReference is wrapped by every error of Normalize.
var ErrInvalidReference = errors.New("invalid image reference")

const (
	defaultDomain       = "docker.io"
	legacyDefaultDomain = "index.docker.io"
	officialRepoPrefix  = "library/"
	defaultTag          = "latest"
	maxNameLength       = 255
)

var (
	// domainRE matches a registry host (DNS name, IPv4 address or bracketed
	// IPv6 address) with an optional port.
	domainRE = regexp.MustCompile(`^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$`)
	// pathComponentRE matches one slash-separated component of a repository
	// path.
	pathComponentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagRE           = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	// imageIDRE matches a bare image ID, which docker refuses as a name.
	imageIDRE = regexp.MustCompile(`^[a-f0-9]{64}$`)
)

// digestHexLengths are the digest algorithms a reference may use, with the
// length of their hex encoding.
var digestHexLengths = map[string]int{"sha256": 64, "sha384": 96, "sha512": 128}

// reference is a parsed image reference: DOMAIN/PATH[:TAG][@DIGEST].
type reference struct {
	domain string
	path   string
	tag    string // empty when absent
	digest string // "algorithm:hex"; empty when absent
}

func (r reference) name() string { return r.domain + "/" + r.path }

func (r reference) String() string {
	s := r.name()
	if r.tag != "" {
		s += ":" + r.tag
	}
	if r.digest != "" {
		s += "@" + r.digest
	}
	return s
}

// Normalize returns the fully qualified form of an image reference, the way
// docker and containerd's CRI plugin name images: the domain defaults to
// docker.io, single-component names on docker.io get the library/ prefix,
// and references with neither tag nor digest get the tag "latest":
//
//	busybox               -> docker.io/library/busybox:latest
//	foo/bar:1             -> docker.io/foo/bar:1
//	localhost/x:y         -> localhost/x:y
//	example.com:5000/x    -> example.com:5000/x:latest
//	busybox@sha256:<hex>  -> docker.io/library/busybox@sha256:<hex>
//
// The first path component is a registry domain when it contains a '.' or
// a ':', is "localhost", or has upper-case letters; repository paths must be
// lower case.
func Normalize(ref string) (string, error) {
	r, err := parseReference(ref)
	if err != nil {
		return "", err
	}
	return r.String(), nil
}

// parseReference parses and normalizes ref (see Normalize).
func parseReference(ref string) (reference, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w %q: %s", ErrInvalidReference, ref, fmt.Sprintf(format, args...))
	}
	if ref == "" {
		return reference{}, fmt.Errorf("%w: empty reference", ErrInvalidReference)
	}
	if imageIDRE.MatchString(ref) {
		return reference{}, invalid("a 64-character hexadecimal string is an image ID, not a name")
	}

	var r reference
	name, digest, hasDigest := strings.Cut(ref, "@")
	if hasDigest {
		if err := validateDigest(digest); err != nil {
			return reference{}, invalid("%v", err)
		}
		r.digest = digest
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		r.tag = name[i+1:]
		name = name[:i]
		if !tagRE.MatchString(r.tag) {
			return reference{}, invalid("bad tag %q (want at most 128 of [A-Za-z0-9_.-], not starting with '.' or '-')", r.tag)
		}
	}

	if name == "" {
		return reference{}, invalid("missing repository name")
	}
	r.domain, r.path = splitDomain(name)
	if !domainRE.MatchString(r.domain) {
		return reference{}, invalid("bad registry domain %q", r.domain)
	}
	if r.domain == legacyDefaultDomain {
		r.domain = defaultDomain
	}
	if r.domain == defaultDomain && !strings.Contains(r.path, "/") {
		r.path = officialRepoPrefix + r.path
	}
	for _, c := range strings.Split(r.path, "/") {
		switch {
		case pathComponentRE.MatchString(c):
		case c == "":
			return reference{}, invalid("empty component in repository name %q", r.path)
		case pathComponentRE.MatchString(strings.ToLower(c)):
			return reference{}, invalid("repository name %q must be lowercase", r.path)
		default:
			return reference{}, invalid("bad component %q in repository name (want lowercase letters and digits separated by '.', '_', '__' or dashes)", c)
		}
	}
	if n := len(r.name()); n > maxNameLength {
		return reference{}, invalid("name is %d characters long, longer than %d", n, maxNameLength)
	}
	if r.tag == "" && r.digest == "" {
		r.tag = defaultTag
	}
	return r, nil
}

// splitDomain splits a name without tag or digest into registry domain and
// repository path, with docker's rules.
func splitDomain(name string) (domain, path string) {
	first, rest, found := strings.Cut(name, "/")
	if !found || (!strings.ContainsAny(first, ".:") && first != "localhost" && strings.ToLower(first) == first) {
		return defaultDomain, name
	}
	return first, rest
}

func validateDigest(d string) error {
	alg, hex, ok := strings.Cut(d, ":")
	if !ok {
		return fmt.Errorf("digest %q is not ALGORITHM:HEX", d)
	}
	n, known := digestHexLengths[alg]
	if !known {
		return fmt.Errorf("unsupported digest algorithm %q", alg)
	}
	if len(hex) != n || strings.Trim(hex, "0123456789abcdef") != "" {
		return fmt.Errorf("digest %q: want %d lowercase hex digits after %q", d, n, alg+":")
	}
	return nil
}
