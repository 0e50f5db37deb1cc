package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/events/eventstest"
)

// buildTokend compiles this command once per test binary run.
func buildTokend(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tokend")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitReady polls /readyz until it answers 200.
func waitReady(t *testing.T, httpAddr string, exited <-chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			t.Fatalf("tokend exited before it was ready: %v", err)
		default:
		}
		if resp, err := http.Get("http://" + httpAddr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("tokend did not become ready")
}

// TestProcessStopsCleanlyOnSignal runs the real binary as an operator would,
// configured partly by TOKEND_* variables, serves a command, and stops with
// exit status 0 on SIGTERM and on SIGINT.
func TestProcessStopsCleanlyOnSignal(t *testing.T) {
	bin := buildTokend(t)
	dataDir := t.TempDir()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			natsAddr, httpAddr := freeAddr(t), freeAddr(t)
			logs := &syncBuffer{}
			cmd := exec.Command(bin, "--nats-listen", natsAddr)
			cmd.Env = append(os.Environ(), "TOKEND_DATA_DIR="+dataDir, "TOKEND_HTTP="+httpAddr)
			cmd.Stdout, cmd.Stderr = logs, logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() { cmd.Process.Kill() })
			waitReady(t, httpAddr, exited)

			nc := eventstest.MustConnect(t, "nats://"+natsAddr)
			f := mustIssue(t, nc, "user-proc", "web-app")
			mustRefresh(t, nc, f.RefreshToken, "web-app")
			nc.Close()

			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("exit after %v: %v\n%s", sig, err, logs)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("tokend did not stop on %v\n%s", sig, logs)
			}
			if !strings.Contains(logs.String(), "msg=stopped") {
				t.Fatalf("no clean stop in the logs:\n%s", logs)
			}
			if _, err := os.Stat(filepath.Join(dataDir, "jetstream")); err != nil {
				t.Fatalf("TOKEND_DATA_DIR was not used: %v", err)
			}
		})
	}
}

// TestProcessRefusesBadConfig: a bad flag or variable is a usage error with
// exit status 2 and a message naming it, before anything starts.
func TestProcessRefusesBadConfig(t *testing.T) {
	bin := buildTokend(t)
	for _, c := range []struct {
		args []string
		env  string
		want string
	}{
		{args: []string{"--reuse-interval", "soon"}, want: "reuse-interval"},
		{env: "TOKEND_STREAM_REPLICAS=0", want: "--stream-replicas"},
		{args: []string{"extra"}, want: "unexpected arguments"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, bin, append(c.args, "--data-dir", t.TempDir())...)
		cmd.Env = os.Environ()
		if c.env != "" {
			cmd.Env = append(cmd.Env, c.env)
		}
		out, err := cmd.CombinedOutput()
		cancel()
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("%v %s: exit %d, output %q; want 2 and %q", c.args, c.env, code, out, c.want)
		}
	}
	out, err := exec.Command(bin, "-h").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--nats-url") && !strings.Contains(string(out), "-nats-url") {
		t.Errorf("-h: %v\n%s", err, out)
	}
}

// TestProcessFailsFastOnTakenPort: a port already in use is a clear startup
// error (exit status 1), not a hang or a panic while cleaning up.
func TestProcessFailsFastOnTakenPort(t *testing.T) {
	bin := buildTokend(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, flag := range []string{"--nats-listen", "--http"} {
		args := []string{"--data-dir", t.TempDir(), "--nats-listen", freeAddr(t), "--http", freeAddr(t), flag, taken.Addr().String()}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		cancel()
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != 1 || !strings.Contains(string(out), "address already in use") || strings.Contains(string(out), "panic") {
			t.Errorf("%s taken: exit %d\n%s", flag, code, out)
		}
	}
}
