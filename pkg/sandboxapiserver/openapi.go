package sandboxapiserver

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-openapi/pkg/common"
	"k8s.io/kube-openapi/pkg/validation/spec"

	metaopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
)

const typesPkg = "github.com/fast-sandbox/fast-sandbox/pkg/apis/subresources/v1alpha1."

// openAPIDefinitions are the OpenAPI definitions of the served types: the
// meta types (from apiextensions-apiserver's generated ones) and ours,
// written by hand since they are few and flat.
func openAPIDefinitions(ref common.ReferenceCallback) map[string]common.OpenAPIDefinition {
	defs := metaopenapi.GetOpenAPIDefinitions(ref)
	str := func(desc string) spec.Schema {
		return spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{"string"}, Description: desc}}
	}
	boolean := func(desc string) spec.Schema {
		return spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{"boolean"}, Description: desc}}
	}
	integer := func(desc string) spec.Schema {
		return spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{"integer"}, Format: "int64", Description: desc}}
	}
	object := func(desc string, required []string, props map[string]spec.Schema, deps ...string) common.OpenAPIDefinition {
		props["kind"] = str("Kind is a string value representing the REST resource this object represents.")
		props["apiVersion"] = str("APIVersion defines the versioned schema of this representation of an object.")
		return common.OpenAPIDefinition{
			Schema:       spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{"object"}, Description: desc, Required: required, Properties: props}},
			Dependencies: deps,
		}
	}
	objectMeta := metav1.ObjectMeta{}.OpenAPIModelName()
	timeName := metav1.Time{}.OpenAPIModelName()
	defs[typesPkg+"Sandbox"] = object("Sandbox is the parent of the interactive subresources; it is never served itself.", nil,
		map[string]spec.Schema{"metadata": {SchemaProps: spec.SchemaProps{Ref: ref(objectMeta)}}}, objectMeta)
	defs[typesPkg+"SandboxExecOptions"] = object("SandboxExecOptions are the query parameters of sandboxes/exec.", []string{"command"},
		map[string]spec.Schema{
			"stdin":  boolean("Stream the command's standard input."),
			"stdout": boolean("Stream the command's standard output."),
			"stderr": boolean("Stream the command's standard error."),
			"tty":    boolean("Run the command with a terminal."),
			"command": {SchemaProps: spec.SchemaProps{Type: []string{"array"}, Description: "The command line.",
				Items: &spec.SchemaOrArray{Schema: &spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{"string"}}}}}},
		})
	defs[typesPkg+"SandboxAttachOptions"] = object("SandboxAttachOptions are the query parameters of sandboxes/attach.", nil,
		map[string]spec.Schema{
			"stdin":  boolean("Refused: the main process's input cannot be attached to."),
			"stdout": boolean("Stream the main process's standard output."),
			"stderr": boolean("Stream the main process's standard error."),
			"tty":    boolean("Refused."),
		})
	defs[typesPkg+"SandboxLogOptions"] = object("SandboxLogOptions are the query parameters of sandboxes/log.", nil,
		map[string]spec.Schema{
			"follow":       boolean("Keep streaming the log as it grows."),
			"sinceSeconds": integer("Only lines newer than this many seconds."),
			"sinceTime":    {SchemaProps: spec.SchemaProps{Ref: ref(timeName), Description: "Only lines from this time on."}},
			"timestamps":   boolean("Start every line with its RFC 3339 time."),
			"tailLines":    integer("Only the last this many lines."),
			"limitBytes":   integer("Stop after this many bytes."),
		}, timeName)
	defs[typesPkg+"SandboxFilesOptions"] = object("SandboxFilesOptions are the query parameters of sandboxes/files.", []string{"path"},
		map[string]spec.Schema{
			"path": str("The file's path inside the sandbox."),
			"op":   str("What GET answers: read (default), list or stat."),
			"mode": str("Permission bits of a file PUT creates, in octal (default 0644)."),
		})
	return defs
}
