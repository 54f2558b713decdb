package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// Sandbox is the parent of the interactive subresources. It is never
// served itself (the resource has no verbs); the Sandbox object is
// fast-sandbox.io/v1alpha1 Sandbox of the same namespace and name.
type Sandbox struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// SandboxExecOptions are the query parameters of sandboxes/exec: run a
// command in the sandbox and stream its standard streams (SPDY or WebSocket
// remote command protocol).
type SandboxExecOptions struct {
	metav1.TypeMeta `json:",inline"`

	// Stdin: stream the command's standard input.
	// +optional
	Stdin bool `json:"stdin,omitempty"`
	// Stdout: stream the command's standard output.
	// +optional
	Stdout bool `json:"stdout,omitempty"`
	// Stderr: stream the command's standard error (not with TTY).
	// +optional
	Stderr bool `json:"stderr,omitempty"`
	// TTY: run the command with a terminal.
	// +optional
	TTY bool `json:"tty,omitempty"`
	// Command is the command line; required.
	Command []string `json:"command"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// SandboxAttachOptions are the query parameters of sandboxes/attach: stream
// the main process's output from now on. Its standard input belongs to its
// log, so Stdin and TTY are refused.
type SandboxAttachOptions struct {
	metav1.TypeMeta `json:",inline"`

	// Stdin is refused: the main process's input cannot be attached to.
	// +optional
	Stdin bool `json:"stdin,omitempty"`
	// Stdout: stream the main process's standard output.
	// +optional
	Stdout bool `json:"stdout,omitempty"`
	// Stderr: stream the main process's standard error.
	// +optional
	Stderr bool `json:"stderr,omitempty"`
	// TTY is refused.
	// +optional
	TTY bool `json:"tty,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// SandboxLogOptions are the query parameters of sandboxes/log.
type SandboxLogOptions struct {
	metav1.TypeMeta `json:",inline"`

	// Follow: keep streaming the log as it grows, until the sandbox ends.
	// +optional
	Follow bool `json:"follow,omitempty"`
	// SinceSeconds: only lines newer than this many seconds.
	// +optional
	SinceSeconds *int64 `json:"sinceSeconds,omitempty"`
	// SinceTime: only lines from this time on (RFC 3339).
	// +optional
	SinceTime *metav1.Time `json:"sinceTime,omitempty"`
	// Timestamps: start every line with its RFC 3339 time.
	// +optional
	Timestamps bool `json:"timestamps,omitempty"`
	// TailLines: only the last this many lines.
	// +optional
	TailLines *int64 `json:"tailLines,omitempty"`
	// LimitBytes: stop after this many bytes.
	// +optional
	LimitBytes *int64 `json:"limitBytes,omitempty"`
}

// The operations of GET sandboxes/files (SandboxFilesOptions.Op).
const (
	// FilesOpRead (the default) answers the file's content.
	FilesOpRead = "read"
	// FilesOpList answers a directory's entries as JSON.
	FilesOpList = "list"
	// FilesOpStat answers the file's description as JSON.
	FilesOpStat = "stat"
)

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// SandboxFilesOptions are the query parameters of sandboxes/files: GET
// reads, lists or describes a path inside the sandbox's root; PUT writes
// the request body to it.
type SandboxFilesOptions struct {
	metav1.TypeMeta `json:",inline"`

	// Path is the file's path inside the sandbox; required.
	Path string `json:"path"`
	// Op is what GET answers: read (default), list or stat.
	// +optional
	Op string `json:"op,omitempty"`
	// Mode is the permission bits of a file PUT creates, in octal (default
	// 0644).
	// +optional
	Mode string `json:"mode,omitempty"`
}
