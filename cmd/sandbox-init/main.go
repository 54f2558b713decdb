// Command sandbox-init is the first process of a warm sandbox container: it
// waits for the agent to say what to run and execs it. See package
// sandboxinit.
package main

import (
	"os"
	"path/filepath"
	"time"

	"github.com/fast-sandbox/fast-sandbox/pkg/sandboxinit"
)

func main() {
	os.Exit(sandboxinit.Main(filepath.Join(sandboxinit.SocketDir, sandboxinit.SocketName), 20*time.Millisecond))
}
