package client

import (
	"os/exec"
	"strings"
	"testing"
)

// TestClientStaysLight: a service importing the client must not link the
// server (SQLite, Prometheus, the read model, the event store).
func TestClientStaysLight(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	deps := string(out)
	if !strings.Contains(deps, "github.com/tokend/tokend/api/wire") {
		t.Fatalf("go list -deps did not list the wire package:\n%s", deps)
	}
	for _, heavy := range []string{"modernc.org/sqlite", "github.com/prometheus/", "github.com/nats-io/nats-server/",
		"github.com/tokend/tokend/projections", "github.com/tokend/tokend/events", "github.com/tokend/tokend/api\n"} {
		if strings.Contains(deps, heavy) {
			t.Errorf("the client depends on %s", strings.TrimSpace(heavy))
		}
	}
}
