package v1alpha1

// Names of the objects the components share in the system namespace: the
// credentials of the agent API (see pkg/agentpki).
const (
	// AgentCASecretName is the Secret holding the certificate authority of
	// the agent API (ca.crt, ca.key). Only the pool controller reads it.
	AgentCASecretName = "fast-sandbox-agent-ca"
	// SchedulerClientSecretName is the Secret holding the scheduler's client
	// certificate for the agent API (tls.crt, tls.key, ca.crt), which the
	// pool controller issues and renews. Only the scheduler reads it.
	SchedulerClientSecretName = "fast-sandbox-scheduler-client"
	// SandboxAPIServerClientSecretName is the Secret holding the
	// sandbox-apiserver's client certificate for the agent API (tls.crt,
	// tls.key, ca.crt; identity agentpki.APIServerIdentity), which the pool
	// controller issues and renews. Only the sandbox-apiserver reads it.
	SandboxAPIServerClientSecretName = "fast-sandbox-apiserver-client"
	// SandboxAPIServerServingSecretName is the Secret, in the namespace of
	// the sandbox-apiserver's Service, holding its serving certificate
	// (tls.crt, tls.key; SANs: the Service's DNS names) and the CA
	// certificate(s) that verify it (ca.crt), which the pool controller
	// issues and renews and also writes into the caBundle of the
	// sandbox-apiserver's APIService. Only the sandbox-apiserver mounts it.
	SandboxAPIServerServingSecretName = "fast-sandbox-apiserver-serving"
	// AgentTLSSecretSuffix ends the name of the Secret holding an agent
	// Pod's server certificate: "<agent Pod name>-tls". Only its agent Pod
	// mounts it.
	AgentTLSSecretSuffix = "-tls"
	// LabelAgentTLS marks an agent's certificate Secret; its value is the
	// name of the agent Pod the certificate names.
	LabelAgentTLS = "fast-sandbox.io/agent-tls"
)

// The agent Pod's contract with the scheduler (the agent's flags and the
// pool controller's Pod template are the other halves).
const (
	// AgentAPIPort is the port of the agent API (mutual TLS), named
	// AgentAPIPortName in the agent container; the scheduler reaches an
	// agent at the port of that name, or at AgentAPIPort.
	AgentAPIPort     = 8081
	AgentAPIPortName = "agent-api"
	// AgentProbePort serves the agent's /healthz, /readyz and /metrics in
	// plain HTTP for kubelet's probes and scrapers, nothing else; it is
	// named AgentProbePortName.
	AgentProbePort     = 8082
	AgentProbePortName = "agent-probe"
	// AnnotationDraining marks an agent Pod the pool controller is about to
	// delete. Its value is the RFC 3339 time the mark was set; a value that
	// does not parse counts as set long ago. The scheduler binds no Sandbox
	// to an agent Pod that carries it, whatever its value. The controller
	// deletes a draining agent no sooner than its drain grace after the mark
	// and only if it then sees no Sandbox bound to it; otherwise it removes
	// the mark.
	AnnotationDraining = "fast-sandbox.io/draining"
)

// AgentTLSSecretName is the name of the Secret holding the server
// certificate of the agent Pod named pod.
func AgentTLSSecretName(pod string) string { return pod + AgentTLSSecretSuffix }

// AnnotationWarmImages is set on the Node the scheduler presents an agent
// as to the scheduling framework. It lists (comma-separated, normalized) the images
// the agent has a free warm container for: a sandbox of such an image
// starts without a container creation. The ImageAffinity plugin scores such
// an agent as if it held the largest image.
const AnnotationWarmImages = "fast-sandbox.io/warm-images"
