package v1alpha1

import (
	"net/url"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
)

func decode(t *testing.T, query url.Values, into runtime.Object) {
	t.Helper()
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := runtime.NewParameterCodec(s).DecodeParameters(query, SchemeGroupVersion, into); err != nil {
		t.Fatalf("decoding %v: %v", query, err)
	}
}

// A client encoding core's options (as kubectl does) is understood.
func TestDecodeCoreEncodedOptions(t *testing.T) {
	q, err := scheme.ParameterCodec.EncodeParameters(&corev1.PodExecOptions{
		Stdin: true, Stdout: true, TTY: true, Command: []string{"sh", "-c", "echo hi"},
	}, corev1.SchemeGroupVersion)
	if err != nil {
		t.Fatal(err)
	}
	var exec SandboxExecOptions
	decode(t, q, &exec)
	want := SandboxExecOptions{Stdin: true, Stdout: true, TTY: true, Command: []string{"sh", "-c", "echo hi"}}
	exec.TypeMeta = metav1.TypeMeta{}
	if !reflect.DeepEqual(exec, want) {
		t.Errorf("exec options %+v, want %+v", exec, want)
	}

	since := metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	tail, limit := int64(10), int64(4096)
	q, err = scheme.ParameterCodec.EncodeParameters(&corev1.PodLogOptions{
		Follow: true, Timestamps: true, SinceTime: &since, TailLines: &tail, LimitBytes: &limit,
	}, corev1.SchemeGroupVersion)
	if err != nil {
		t.Fatal(err)
	}
	var logs SandboxLogOptions
	decode(t, q, &logs)
	if !logs.Follow || !logs.Timestamps || logs.SinceTime == nil || !logs.SinceTime.Equal(&since) ||
		logs.TailLines == nil || *logs.TailLines != 10 || logs.LimitBytes == nil || *logs.LimitBytes != 4096 || logs.SinceSeconds != nil {
		t.Errorf("log options %+v", logs)
	}

	var attach SandboxAttachOptions
	decode(t, url.Values{"stdout": {"true"}, "stderr": {"1"}}, &attach)
	if !attach.Stdout || !attach.Stderr || attach.Stdin || attach.TTY {
		t.Errorf("attach options %+v", attach)
	}
}

func TestDecodeFilesOptions(t *testing.T) {
	var files SandboxFilesOptions
	decode(t, url.Values{"path": {"/etc/../x y"}, "op": {"stat"}, "mode": {"0600"}}, &files)
	if files.Path != "/etc/../x y" || files.Op != FilesOpStat || files.Mode != "0600" {
		t.Errorf("files options %+v", files)
	}
	var bad SandboxLogOptions
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := runtime.NewParameterCodec(s).DecodeParameters(url.Values{"tailLines": {"x"}}, SchemeGroupVersion, &bad); err == nil {
		t.Error("tailLines=x decoded")
	}
}
