package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnit checks ops/systemd/tokend.service with systemd's own
// tools: it must load, and its hardening must rate as exposure "OK".
func TestSystemdUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze is not installed: run the tests with 'make test', which installs it")
	}
	unit, err := os.ReadFile(filepath.Join(opsDir, "systemd", "tokend.service"))
	if err != nil {
		t.Fatal(err)
	}
	// verify wants ExecStart to exist: point it at a freshly built tokend.
	bin := buildTokend(t)
	text := strings.Replace(string(unit), "ExecStart=/usr/local/bin/tokend", "ExecStart="+bin, 1)
	if text == string(unit) {
		t.Fatal("the unit no longer starts /usr/local/bin/tokend")
	}
	path := filepath.Join(t.TempDir(), "tokend.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Exposure is 0 (locked down) to 100 (unprotected); 20 is systemd's "OK" band.
	out, err := exec.Command(analyze, "security", "--offline=yes", "--threshold=20", path).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: %v\n%s", err, out)
	}
	for _, directive := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=tokend"} {
		if !strings.Contains(text, directive) {
			t.Errorf("the unit lacks %s", directive)
		}
	}
}
