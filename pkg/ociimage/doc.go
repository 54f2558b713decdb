// Package ociimage builds small single-layer container images as OCI image
// layout tar archives, without Docker or a registry. The archives are meant
// for containerd's importer:
//
//	ctr -n k8s.io images import IMAGE.tar
//
// which names the image after the io.containerd.image.name annotation that
// the archive's index.json carries (the normalized reference, for example
// docker.io/library/busybox:latest).
//
// Builds are reproducible: the same reference, Config and Files give the
// same bytes (with the same Go toolchain, whose gzip output the layer blob
// depends on), because timestamps are fixed at the Unix epoch, owners are
// root, and entries are sorted.
package ociimage
