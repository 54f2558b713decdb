package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
)

// FileInfo describes one file of a sandbox (the agent's wire type): Name,
// Size, Mode (Unix permission bits, mode & 07777), ModTime, Type (file,
// dir, symlink, other) and LinkTarget.
type FileInfo = api.FileInfo

// The kinds of file of FileInfo.Type.
const (
	FileTypeFile    = api.FileTypeFile
	FileTypeDir     = api.FileTypeDir
	FileTypeSymlink = api.FileTypeSymlink
	FileTypeOther   = api.FileTypeOther
)

// MaxWriteBytes bounds the content of one WriteFile.
const MaxWriteBytes = api.MaxFileWriteBytes

// Paths are absolute paths inside the sandbox's root filesystem; the agent
// resolves them there (.. and symlinks cannot leave it). Files calls are not
// long-running for the API server: each one must finish within its request
// timeout (60 s by default), so large transfers belong to exec (tar).

// ReadFile copies the content of a regular file of the sandbox to w.
func (c *Client) ReadFile(ctx context.Context, namespace, name, path string, w io.Writer) error {
	rc, err := c.subresource(http.MethodGet, namespace, name, "files").
		Param("path", path).
		Param("op", api.FileOpRead).
		Stream(ctx)
	if err != nil {
		return err
	}
	defer rc.Close() //nolint:errcheck // read-only stream
	_, err = io.Copy(w, rc)
	return err
}

// WriteFile replaces (or creates) a regular file of the sandbox with the
// content of r, atomically, with the permission bits mode (e.g. 0o644). The
// content is at most MaxWriteBytes.
func (c *Client) WriteFile(ctx context.Context, namespace, name, path string, r io.Reader, mode uint32) error {
	return c.subresource(http.MethodPut, namespace, name, "files").
		Param("path", path).
		Param("mode", "0"+strconv.FormatUint(uint64(mode&0o7777), 8)).
		SetHeader("Content-Type", "application/octet-stream").
		Body(r).
		Do(ctx).
		Error()
}

// Stat describes one file of the sandbox (a symlink itself, not its target).
func (c *Client) Stat(ctx context.Context, namespace, name, path string) (*FileInfo, error) {
	var fi FileInfo
	if err := c.getFilesJSON(ctx, namespace, name, path, api.FileOpStat, &fi); err != nil {
		return nil, err
	}
	return &fi, nil
}

// List describes the entries of a directory of the sandbox.
func (c *Client) List(ctx context.Context, namespace, name, path string) ([]FileInfo, error) {
	var entries []FileInfo
	if err := c.getFilesJSON(ctx, namespace, name, path, api.FileOpList, &entries); err != nil {
		return nil, err
	}
	return entries, nil
}

func (c *Client) getFilesJSON(ctx context.Context, namespace, name, path, op string, into any) error {
	res := c.subresource(http.MethodGet, namespace, name, "files").
		Param("path", path).
		Param("op", op).
		Do(ctx)
	// Error, not Raw's error: it is the Status the server sent.
	if err := res.Error(); err != nil {
		return err
	}
	body, err := res.Raw()
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("files %s %s: decoding the answer: %w", op, path, err)
	}
	return nil
}
