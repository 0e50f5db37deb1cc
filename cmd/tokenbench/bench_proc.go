package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// modulePath identifies the source tree bench builds its servers from.
const modulePath = "github.com/tokend/tokend"

// moduleRoot walks up from dir to the go.mod of modulePath.
func moduleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if data, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && goModPath(data) == modulePath {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod of module %s in %s or above: run tokenbench inside the tokend source tree, or give the binaries with --tokend and --tokenbaseline", modulePath, dir)
		}
	}
}

// goModPath returns the module path declared in a go.mod file.
func goModPath(gomod []byte) string {
	for line := range strings.Lines(string(gomod)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "module"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// serverPackages are the packages of the servers bench can build: tokend
// and tokenbaseline from this tree, and with --instances the standalone
// nats-server from the version in go.mod (so it runs offline, from the
// module cache, and matches the server tokend embeds).
var serverPackages = map[string]string{
	"tokend":        "./cmd/tokend",
	"tokenbaseline": "./cmd/tokenbaseline",
	"nats-server":   "github.com/nats-io/nats-server/v2",
}

// buildServers compiles the given servers (e.g. "tokend") of the module
// containing the working directory into dir, in one go build, and returns
// their paths by name.
func buildServers(ctx context.Context, dir string, names []string) (map[string]string, error) {
	root, err := moduleRoot(".")
	if err != nil {
		return nil, err
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	bins := map[string]string{}
	for _, name := range names {
		args = append(args, serverPackages[name])
		bins[name] = filepath.Join(dir, name)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go %s in %s: %v\n%s", strings.Join(args, " "), root, err, out)
	}
	return bins, nil
}

// serverProc is a server process started by bench (tokend, tokenbaseline
// or nats-server), with its own temporary directory and free loopback
// ports.
type serverProc struct {
	name     string
	dir      string // data and log, removed by stop unless kept
	natsURL  string // where its clients connect
	httpAddr string // its /readyz and /metrics; nats-server's monitoring
	cmd      *exec.Cmd
	exited   chan struct{} // closed once cmd.Wait returned, with waitErr set
	waitErr  error
}

// newServerProc makes the directory and picks the HTTP address of a server
// about to start.
func newServerProc(name string) (*serverProc, error) {
	dir, err := os.MkdirTemp("", "tokenbench-"+name+"-")
	if err != nil {
		return nil, err
	}
	s := &serverProc{name: name, dir: dir, exited: make(chan struct{})}
	if s.httpAddr, err = freeLoopbackAddr(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// startServer runs bin (tokend or tokenbaseline, with its NATS server
// embedded) with --data-dir, --nats-listen and --http of its own plus
// extra, and env added to the environment, and waits until /readyz answers
// 200.
func startServer(ctx context.Context, name, bin string, extra, env []string) (*serverProc, error) {
	s, err := newServerProc(name)
	if err != nil {
		return nil, err
	}
	natsAddr, err := freeLoopbackAddr()
	if err != nil {
		os.RemoveAll(s.dir)
		return nil, err
	}
	s.natsURL = "nats://" + natsAddr
	args := append([]string{"--data-dir", filepath.Join(s.dir, "data"), "--nats-listen", natsAddr, "--http", s.httpAddr}, extra...)
	if err := s.start(ctx, bin, args, env, "/readyz"); err != nil {
		return nil, err
	}
	return s, nil
}

// start runs bin with args, and env added to the environment, and waits
// until readyPath on its HTTP address answers 200. The child's output goes
// to a log file in its directory, quoted in errors. On failure the
// directory is removed.
func (s *serverProc) start(ctx context.Context, bin string, args, env []string, readyPath string) error {
	logf, err := os.Create(filepath.Join(s.dir, s.name+".log"))
	if err != nil {
		os.RemoveAll(s.dir)
		return err
	}
	defer logf.Close() // the child holds its own descriptor
	s.cmd = exec.Command(bin, args...)
	// A TOKEND_* variable in bench's environment would configure tokend
	// behind the command line's back: the run is defined by its flags and
	// env.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TOKEND_") {
			s.cmd.Env = append(s.cmd.Env, kv)
		}
	}
	s.cmd.Env = append(s.cmd.Env, env...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(s.dir)
		return fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { s.waitErr = s.cmd.Wait(); close(s.exited) }()
	if err := s.waitReady(ctx, readyPath, 60*time.Second); err != nil {
		s.cmd.Process.Kill()
		<-s.exited
		err = fmt.Errorf("%s %s: %w%s", s.name, strings.Join(args, " "), err, s.logTail())
		os.RemoveAll(s.dir)
		return err
	}
	return nil
}

// freeLoopbackAddr returns a loopback address with a port free right now.
// The child binds it a moment later; on a machine running nothing else that
// picks ports this way, nobody takes it in between.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (s *serverProc) waitReady(ctx context.Context, path string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	url := "http://" + s.httpAddr + path
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.exited:
			return fmt.Errorf("exited before it was ready: %v", s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer 200 within %v", url, within)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *serverProc) pid() int { return s.cmd.Process.Pid }

// stop sends SIGTERM and expects exit status 0 within 30 s (tokend drains
// in-flight requests and flushes its projections first; nats-server shuts
// down and exits 0). The directory is
// removed unless keep, or unless the stop failed: its log says why.
func (s *serverProc) stop(keep bool) error {
	var err error
	if serr := s.cmd.Process.Signal(syscall.SIGTERM); serr != nil && !errors.Is(serr, os.ErrProcessDone) {
		err = serr
	}
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
		err = errors.New("did not stop within 30 s of SIGTERM; killed")
	}
	if err == nil && s.waitErr != nil {
		err = fmt.Errorf("exited with %v after SIGTERM, want status 0", s.waitErr)
	}
	if err != nil {
		return fmt.Errorf("%s: %w (log and data kept in %s)%s", s.name, err, s.dir, s.logTail())
	}
	if keep {
		return nil
	}
	return os.RemoveAll(s.dir)
}

// logTail returns the end of the child's log, to quote in an error.
func (s *serverProc) logTail() string {
	data, err := os.ReadFile(filepath.Join(s.dir, s.name+".log"))
	if err != nil || len(data) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return "\n" + strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// clockTicks is the unit of the CPU times in /proc/<pid>/stat: getconf
// CLK_TCK, or 100, the value Linux reports on every architecture.
func clockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || n <= 0 {
		return 100
	}
	return float64(n)
}

// procCPU returns the user plus system CPU time process pid has used, in
// clock ticks, from /proc/<pid>/stat.
func procCPU(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(data)
}

// parseStatCPU reads utime and stime, fields 14 and 15 of a
// /proc/<pid>/stat line. The command name (field 2) is in parentheses and
// may hold spaces, so fields are counted after its closing one.
func parseStatCPU(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("/proc stat: no command name")
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3
	if len(f) < 13 {
		return 0, errors.New("/proc stat: too few fields")
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc stat: %w", err)
	}
	return utime + stime, nil
}

// procPeakRSS returns VmHWM, the peak resident set size of process pid, in
// bytes, from /proc/<pid>/status.
func procPeakRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseStatusKB(data, "VmHWM:")
}

// parseStatusKB returns the value of a "key: N kB" line of /proc/<pid>/status
// in bytes.
func parseStatusKB(status []byte, key string) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), key)
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc status %s %w", key, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("/proc status: no %s", key)
}
