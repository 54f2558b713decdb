package v1alpha1

import (
	"net/url"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/conversion"
	"k8s.io/apimachinery/pkg/runtime"
)

// RegisterConversions adds the conversions from query parameters
// (url.Values) to the options types, which the API server's parameter
// codec uses to decode a request's options.
func RegisterConversions(s *runtime.Scheme) error {
	if err := s.AddConversionFunc((*url.Values)(nil), (*SandboxExecOptions)(nil), func(a, b any, scope conversion.Scope) error {
		return Convert_url_Values_To_v1alpha1_SandboxExecOptions(a.(*url.Values), b.(*SandboxExecOptions), scope)
	}); err != nil {
		return err
	}
	if err := s.AddConversionFunc((*url.Values)(nil), (*SandboxAttachOptions)(nil), func(a, b any, scope conversion.Scope) error {
		return Convert_url_Values_To_v1alpha1_SandboxAttachOptions(a.(*url.Values), b.(*SandboxAttachOptions), scope)
	}); err != nil {
		return err
	}
	if err := s.AddConversionFunc((*url.Values)(nil), (*SandboxLogOptions)(nil), func(a, b any, scope conversion.Scope) error {
		return Convert_url_Values_To_v1alpha1_SandboxLogOptions(a.(*url.Values), b.(*SandboxLogOptions), scope)
	}); err != nil {
		return err
	}
	return s.AddConversionFunc((*url.Values)(nil), (*SandboxFilesOptions)(nil), func(a, b any, scope conversion.Scope) error {
		return Convert_url_Values_To_v1alpha1_SandboxFilesOptions(a.(*url.Values), b.(*SandboxFilesOptions), scope)
	})
}

// param converts the values of query parameter name with convert; an
// absent or empty parameter leaves out at its zero value.
func param[T any](in *url.Values, name string, out *T, s conversion.Scope,
	convert func(*[]string, *T, conversion.Scope) error) error {
	values, ok := (*in)[name]
	if !ok || len(values) == 0 {
		var zero T
		*out = zero
		return nil
	}
	return convert(&values, out, s)
}

func stringSlice(in *[]string, out *[]string, _ conversion.Scope) error {
	*out = append([]string(nil), *in...)
	return nil
}

// Convert_url_Values_To_v1alpha1_SandboxExecOptions decodes exec's query.
func Convert_url_Values_To_v1alpha1_SandboxExecOptions(in *url.Values, out *SandboxExecOptions, s conversion.Scope) error {
	for _, f := range []struct {
		name string
		out  *bool
	}{{"stdin", &out.Stdin}, {"stdout", &out.Stdout}, {"stderr", &out.Stderr}, {"tty", &out.TTY}} {
		if err := param(in, f.name, f.out, s, runtime.Convert_Slice_string_To_bool); err != nil {
			return err
		}
	}
	return param(in, "command", &out.Command, s, stringSlice)
}

// Convert_url_Values_To_v1alpha1_SandboxAttachOptions decodes attach's query.
func Convert_url_Values_To_v1alpha1_SandboxAttachOptions(in *url.Values, out *SandboxAttachOptions, s conversion.Scope) error {
	for _, f := range []struct {
		name string
		out  *bool
	}{{"stdin", &out.Stdin}, {"stdout", &out.Stdout}, {"stderr", &out.Stderr}, {"tty", &out.TTY}} {
		if err := param(in, f.name, f.out, s, runtime.Convert_Slice_string_To_bool); err != nil {
			return err
		}
	}
	return nil
}

// Convert_url_Values_To_v1alpha1_SandboxLogOptions decodes log's query.
func Convert_url_Values_To_v1alpha1_SandboxLogOptions(in *url.Values, out *SandboxLogOptions, s conversion.Scope) error {
	if err := param(in, "follow", &out.Follow, s, runtime.Convert_Slice_string_To_bool); err != nil {
		return err
	}
	if err := param(in, "timestamps", &out.Timestamps, s, runtime.Convert_Slice_string_To_bool); err != nil {
		return err
	}
	if err := param(in, "sinceTime", &out.SinceTime, s, metav1.Convert_Slice_string_To_Pointer_v1_Time); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		out  **int64
	}{{"sinceSeconds", &out.SinceSeconds}, {"tailLines", &out.TailLines}, {"limitBytes", &out.LimitBytes}} {
		if err := param(in, f.name, f.out, s, runtime.Convert_Slice_string_To_Pointer_int64); err != nil {
			return err
		}
	}
	return nil
}

// Convert_url_Values_To_v1alpha1_SandboxFilesOptions decodes files' query.
func Convert_url_Values_To_v1alpha1_SandboxFilesOptions(in *url.Values, out *SandboxFilesOptions, s conversion.Scope) error {
	for _, f := range []struct {
		name string
		out  *string
	}{{"path", &out.Path}, {"op", &out.Op}, {"mode", &out.Mode}} {
		if err := param(in, f.name, f.out, s, runtime.Convert_Slice_string_To_string); err != nil {
			return err
		}
	}
	return nil
}
