package agent

import (
	"errors"
	"net/http"
	"os"
	"strconv"
	"syscall"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/sandboxfs"
)

// The files route: GET reads a regular file (op=read, the default), lists a
// directory (op=list) or describes a file (op=stat); PUT replaces a regular
// file atomically with the body (at most api.MaxFileWriteBytes) and mode
// (octal, default 0644). Paths are resolved inside the sandbox's root by
// sandboxfs and cannot leave it.

// defaultFileMode is the mode of a file written without one.
const defaultFileMode = 0o644

func (a *Agent) serveFiles(w http.ResponseWriter, r *http.Request) error {
	uid := r.PathValue("uid")
	q := r.URL.Query()
	path := q.Get("path")
	if path == "" {
		return refuse(http.StatusBadRequest, "parameter path is required")
	}
	op := api.FileOpRead
	var mode os.FileMode
	if r.Method == http.MethodPut {
		if q.Has("op") {
			return refuse(http.StatusBadRequest, "parameter op is for GET only")
		}
		m, err := fileMode(q.Get("mode"))
		if err != nil {
			return err
		}
		mode = m
		if r.ContentLength > api.MaxFileWriteBytes {
			return refuse(http.StatusRequestEntityTooLarge, "the content is %d bytes; at most %d may be written", r.ContentLength, api.MaxFileWriteBytes)
		}
	} else {
		if q.Has("mode") {
			return refuse(http.StatusBadRequest, "parameter mode is for PUT only")
		}
		if v := q.Get("op"); v != "" {
			op = v
		}
		if op != api.FileOpRead && op != api.FileOpList && op != api.FileOpStat {
			return refuse(http.StatusBadRequest, "parameter op=%q: want %s, %s or %s", short(op), api.FileOpRead, api.FileOpList, api.FileOpStat)
		}
	}
	rt, err := a.interactiveRuntime()
	if err != nil {
		return err
	}
	s, err := a.beginSession(uid, sessionThaw)
	if err != nil {
		return err
	}
	defer s.end()
	root, owner, err := rt.Root(r.Context(), uid)
	if err != nil {
		return runtimeError(err)
	}
	defer func() { _ = root.Close() }()

	switch {
	case r.Method == http.MethodPut:
		if err := sandboxfs.WriteFile(root, path, r.Body, mode, owner, api.MaxFileWriteBytes); err != nil {
			return fileError(err)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	case op == api.FileOpStat:
		fi, err := sandboxfs.Stat(root, path)
		if err != nil {
			return fileError(err)
		}
		return writeJSON(w, fi)
	case op == api.FileOpList:
		list, err := sandboxfs.List(root, path)
		if err != nil {
			return fileError(err)
		}
		if list == nil {
			list = []api.FileInfo{}
		}
		return writeJSON(w, list)
	}
	// The file is opened and checked before its first byte is written, so
	// an error up to then is answered as such.
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	return fileError(sandboxfs.ReadFile(root, path, w, 0))
}

// fileMode parses an octal mode: permission bits with setuid (04000), setgid
// (02000) and sticky (01000); empty is defaultFileMode.
func fileMode(v string) (os.FileMode, error) {
	if v == "" {
		return defaultFileMode, nil
	}
	n, err := strconv.ParseUint(v, 8, 32)
	if err != nil || n > 0o7777 {
		return 0, refuse(http.StatusBadRequest, "parameter mode=%q: want an octal mode of at most 7777, e.g. 0644", short(v))
	}
	m := os.FileMode(n & 0o777)
	if n&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if n&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if n&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m, nil
}

// fileError maps sandboxfs's errors to answers.
func fileError(err error) error {
	if err == nil {
		return nil
	}
	code := 0
	switch {
	case errors.Is(err, sandboxfs.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, sandboxfs.ErrEscape):
		code = http.StatusBadRequest
	case errors.Is(err, sandboxfs.ErrNotRegular):
		code = http.StatusConflict
	case errors.Is(err, sandboxfs.ErrTooLarge):
		code = http.StatusRequestEntityTooLarge
	case errors.Is(err, os.ErrPermission):
		code = http.StatusForbidden
	case errors.Is(err, syscall.EROFS):
		code = http.StatusConflict
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		code = http.StatusInsufficientStorage
	case errors.Is(err, errors.ErrUnsupported):
		code = http.StatusNotImplemented
	default:
		return runtimeError(err)
	}
	return refuse(code, "%s", err.Error())
}
