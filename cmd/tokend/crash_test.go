//go:build reliability

// The crash test kills the real tokend binary with SIGKILL under load and
// restarts it on the same data directory, five times, with the default sync
// mode and with --sync-always. It takes about 40 s:
//
//	go test -tags reliability -race -count=1 -run TestCrash -v ./cmd/tokend
package main

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// tokendProcess is the tokend binary running as a child process.
type tokendProcess struct {
	cmd      *exec.Cmd
	natsURL  string
	httpAddr string
	logs     *syncBuffer
	exited   chan error
}

// startTokend runs bin on dataDir with fresh ports and waits until it is ready.
func startTokend(t *testing.T, bin, dataDir string, args ...string) *tokendProcess {
	t.Helper()
	natsAddr, httpAddr := freeAddr(t), freeAddr(t)
	return runTokend(t, bin, "nats://"+natsAddr, httpAddr, append([]string{"--data-dir", dataDir, "--nats-listen", natsAddr}, args...))
}

// runTokend runs bin with args, its NATS server at natsURL and --http at
// httpAddr, and waits until it is ready; it is killed when the test ends.
func runTokend(t *testing.T, bin, natsURL, httpAddr string, args []string) *tokendProcess {
	t.Helper()
	p := &tokendProcess{natsURL: natsURL, httpAddr: httpAddr, logs: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(bin, append(args, "--http", httpAddr)...)
	p.cmd.Env = os.Environ()
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() { p.cmd.Process.Kill() })
	waitReady(t, httpAddr, p.exited)
	return p
}

// kill ends the process with SIGKILL: no shutdown code runs.
func (p *tokendProcess) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("tokend did not die on SIGKILL")
	}
}

// stop ends the process with SIGTERM and wants a clean exit.
func (p *tokendProcess) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, p.logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("tokend did not stop on SIGTERM\n%s", p.logs)
	}
}

// TestCrashKill9UnderLoad: goroutines rotate their own families through a
// tokend process that is killed with SIGKILL at a random moment, then
// restarted on the same data directory. After every restart each
// acknowledged rotation is in the stream, no chain forked and nothing was
// revoked; each family's last acknowledged token still works, and where a
// request was in flight at the kill and its rotation was stored with the
// reply lost, retrying the parent returns that same child; the read model
// converges on the stream with every event exactly once.
func TestCrashKill9UnderLoad(t *testing.T) {
	bin := buildTokend(t)
	for _, mode := range []struct {
		name string
		args []string
	}{
		{"default", nil},
		{"sync-always", []string{"--sync-always"}},
	} {
		t.Run(mode.name, func(t *testing.T) { crashRounds(t, bin, 5, 8, mode.args...) })
	}
}

func crashRounds(t *testing.T, bin string, rounds, families int, args ...string) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed))
	t.Logf("seed %d", seed)
	dataDir := t.TempDir()
	// A retry after the restart must fall inside the reuse interval.
	// The load rotates each family as fast as it can: the rate limit would
	// leave few rotations in flight when the process dies.
	args = append([]string{"--reuse-interval", "1m", "--rate-refresh-per-family", "0"}, args...)
	var (
		l        *load
		inFlight int
	)
	for round := 0; ; round++ {
		p := startTokend(t, bin, dataDir, args...)
		nc, err := nats.Connect(p.natsURL, nats.NoReconnect())
		if err != nil {
			t.Fatal(err)
		}
		if l == nil {
			l = newLoad(t, nc, families)
		} else {
			l.verify(nc)
			l.resolve(nc)
			l.verify(nc)
			l.checkProjections(nc)
		}
		if round == rounds {
			p.stop(t)
			nc.Close()
			wantCleanLogs(t, p.logs.String())
			break
		}
		stopLoad := l.run(nc, 2*time.Second)
		after := 300*time.Millisecond + time.Duration(rng.Int64N(int64(1200*time.Millisecond)))
		time.Sleep(after)
		p.kill(t)
		stopLoad()
		nc.Close()
		if t.Failed() {
			t.FailNow()
		}
		wantCleanLogs(t, p.logs.String())
		n := 0
		for _, f := range l.fams {
			if f.inFlight {
				n++
			}
		}
		inFlight += n
		t.Logf("round %d: killed %v into the load; %d rotations acknowledged so far; %d of %d families had a request in flight",
			round+1, after.Round(time.Millisecond), l.rotations(), n, families)
	}
	t.Logf("%d rounds, %d rotations acknowledged over %d families; %d requests in flight at a kill: %d had stored their rotation and got the same child on retry after the restart, the others rotated afresh; %d requests failed in all; %d token.reused events",
		rounds, l.rotations(), families, inFlight, l.resolved, l.failures.Load(), l.reused)
}
