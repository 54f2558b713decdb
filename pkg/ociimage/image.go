package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strings"

	"github.com/distribution/reference"
)

const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"

	// annotationImageName is the annotation of index.json from which
	// containerd's importer names the image.
	annotationImageName = "io.containerd.image.name"
	// annotationRefName is the OCI annotation for the image's tag.
	annotationRefName = "org.opencontainers.image.ref.name"

	ociLayoutVersion = "1.0.0"
	createdBy        = "github.com/fast-sandbox/fast-sandbox/pkg/ociimage"
)

// Config is the runtime configuration of an image: what a container of it
// runs unless told otherwise.
type Config struct {
	Entrypoint []string
	Cmd        []string
	// Env holds KEY=VALUE strings.
	Env        []string
	WorkingDir string
	// User is a user name or uid, optionally followed by ":" and a group
	// name or gid.
	User   string
	Labels map[string]string
}

// The JSON documents of an OCI image layout, reduced to what Build writes.

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type imageConfig struct {
	Created      string          `json:"created"`
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Config       containerConfig `json:"config"`
	RootFS       rootFS          `json:"rootfs"`
	History      []history       `json:"history"`
}

type containerConfig struct {
	User       string            `json:"User,omitempty"`
	Env        []string          `json:"Env,omitempty"`
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type history struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

type ociLayout struct {
	ImageLayoutVersion string `json:"imageLayoutVersion"`
}

// blob is a content-addressed file of the layout.
type blob struct {
	digest string
	data   []byte
}

// Image is a built image, held in memory until WriteTo writes it.
type Image struct {
	ref      string
	manifest descriptor
	blobs    []blob // layer, config, manifest
	index    []byte
}

// Ref returns the image's normalized reference, like
// "docker.io/library/busybox:latest".
func (img *Image) Ref() string { return img.ref }

// Digest returns the digest of the image manifest, "sha256:" and 64 hex
// digits: the image's digest once imported.
func (img *Image) Digest() string { return img.manifest.Digest }

// Build builds an image from cfg and files (see New) and writes it to w as
// an OCI image layout tar archive (see Image.WriteTo).
func Build(w io.Writer, ref string, cfg Config, files []File) error {
	img, err := New(ref, cfg, files)
	if err != nil {
		return err
	}
	_, err = img.WriteTo(w)
	return err
}

// New builds an image named ref with the runtime configuration cfg and one
// gzip-compressed layer that holds files, for the architecture the program
// runs on (runtime.GOARCH) and OS linux. ref is normalized (see Normalize)
// and must have a tag but no digest. Files with a SourcePath are read now.
func New(ref string, cfg Config, files []File) (*Image, error) {
	named, err := parse(ref)
	if err != nil {
		return nil, err
	}
	// Normalized, a reference has a tag unless it has a digest (a tag
	// beside a digest is dropped).
	tagged, ok := named.(reference.Tagged)
	if !ok {
		return nil, fmt.Errorf("image reference %q: a built image cannot be named by a digest", ref)
	}
	for _, kv := range cfg.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("environment variable %q: want KEY=VALUE", kv)
		}
	}
	entries, err := layerEntries(files)
	if err != nil {
		return nil, err
	}

	var layer bytes.Buffer
	gz := gzip.NewWriter(&layer)
	diffID := sha256.New()
	if err := writeLayer(io.MultiWriter(gz, diffID), entries); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, fmt.Errorf("compressing layer: %w", err)
	}
	layerBlob := newBlob(layer.Bytes())

	const created = "1970-01-01T00:00:00Z"
	configBlob, err := marshalBlob(imageConfig{
		Created:      created,
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Config: containerConfig{
			User:       cfg.User,
			Env:        cfg.Env,
			Entrypoint: cfg.Entrypoint,
			Cmd:        cfg.Cmd,
			WorkingDir: cfg.WorkingDir,
			Labels:     cfg.Labels,
		},
		RootFS: rootFS{
			Type:    "layers",
			DiffIDs: []string{"sha256:" + hex.EncodeToString(diffID.Sum(nil))},
		},
		History: []history{{Created: created, CreatedBy: createdBy}},
	})
	if err != nil {
		return nil, fmt.Errorf("encoding image config: %w", err)
	}
	manifestBlob, err := marshalBlob(manifest{
		SchemaVersion: 2,
		MediaType:     mediaTypeManifest,
		Config:        configBlob.descriptor(mediaTypeConfig),
		Layers:        []descriptor{layerBlob.descriptor(mediaTypeLayer)},
	})
	if err != nil {
		return nil, fmt.Errorf("encoding image manifest: %w", err)
	}

	manifestDesc := manifestBlob.descriptor(mediaTypeManifest)
	manifestDesc.Annotations = map[string]string{
		annotationImageName: named.String(),
		annotationRefName:   tagged.Tag(),
	}
	manifestDesc.Platform = &platform{Architecture: runtime.GOARCH, OS: "linux"}
	idx, err := json.Marshal(index{
		SchemaVersion: 2,
		MediaType:     mediaTypeIndex,
		Manifests:     []descriptor{manifestDesc},
	})
	if err != nil {
		return nil, fmt.Errorf("encoding image index: %w", err)
	}
	return &Image{
		ref:      named.String(),
		manifest: manifestDesc,
		blobs:    []blob{layerBlob, configBlob, manifestBlob},
		index:    idx,
	}, nil
}

func newBlob(data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{digest: "sha256:" + hex.EncodeToString(sum[:]), data: data}
}

func marshalBlob(v any) (blob, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return blob{}, err
	}
	return newBlob(data), nil
}

func (b blob) descriptor(mediaType string) descriptor {
	return descriptor{MediaType: mediaType, Digest: b.digest, Size: int64(len(b.data))}
}

// WriteTo writes the image to w as a tar archive of an OCI image layout:
// oci-layout, index.json and blobs/sha256/. It returns the number of bytes
// written.
func (img *Image) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	if err := img.writeLayout(tar.NewWriter(cw)); err != nil {
		return cw.n, fmt.Errorf("writing image archive of %s: %w", img.ref, err)
	}
	return cw.n, nil
}

func (img *Image) writeLayout(tw *tar.Writer) error {
	layout, err := json.Marshal(ociLayout{ImageLayoutVersion: ociLayoutVersion})
	if err != nil {
		return err
	}
	if err := writeFile(tw, "oci-layout", layout); err != nil {
		return err
	}
	if err := writeFile(tw, "index.json", img.index); err != nil {
		return err
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
	}
	for _, b := range img.blobs {
		if err := writeFile(tw, "blobs/"+strings.Replace(b.digest, ":", "/", 1), b.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

func writeFile(tw *tar.Writer, name string, data []byte) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
