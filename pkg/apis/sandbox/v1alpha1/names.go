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
	// AgentTLSSecretSuffix ends the name of the Secret holding an agent
	// Pod's server certificate: "<agent Pod name>-tls". Only its agent Pod
	// mounts it.
	AgentTLSSecretSuffix = "-tls"
	// LabelAgentTLS marks an agent's certificate Secret; its value is the
	// name of the agent Pod the certificate names.
	LabelAgentTLS = "fast-sandbox.io/agent-tls"
)

// AgentTLSSecretName is the name of the Secret holding the server
// certificate of the agent Pod named pod.
func AgentTLSSecretName(pod string) string { return pod + AgentTLSSecretSuffix }
