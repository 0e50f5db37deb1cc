// Command tokenctl is the operator CLI of tokend, over NATS:
//
//	tokenctl [--nats-url URL] [--prefix P] [--timeout D] [--json] <command> [flags]
//
// (the global flags may also follow the command). Commands: issue, refresh
// and revoke change token families; introspect, family and audit query the
// read model (audit can page through everything or follow new events
// live); keys prints the JWKS, lists the keys or rotates them; clients
// registers OAuth clients; ssf steers SSF streams and webhooks; rebuild
// writes a fresh SQLite read model from the event stream; audit-token makes
// a bearer token for the audit listener. (The benchmark is a command of
// its own, tokenbench.)
//
// Each command lives in its own file and is listed in the commands map below.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/cmd/internal/cli"
)

// defaultNATSURL is where `go run ./cmd/tokend` listens by default.
const defaultNATSURL = "nats://127.0.0.1:4222"

// defaultTimeout bounds one invocation, connecting included; for the
// commands marked long, connecting and each request.
const defaultTimeout = 10 * time.Second

// command is one tokenctl subcommand.
type command struct {
	summary  string // one line for the command list
	synopsis string // flags after "tokenctl [global flags] <name> "
	help     string // paragraphs printed by -h above the flags; may be empty

	// args is how many positional arguments the command takes, before,
	// between or after its flags (in env.args); run refuses more, the
	// command checks it got enough.
	args int
	// jsonHelp describes --json where the command does not simply print
	// one reply as received; empty for the default.
	jsonHelp string
	// long marks a command that may run for minutes or until interrupted
	// (audit with --all or --follow, rebuild): --timeout then bounds
	// connecting and each request, not the whole run.
	long bool

	// setup declares the command's flags on fs and returns the function that
	// runs the command once fs is parsed. That function checks its flags first
	// (returning usagef errors, exit 2) and only then calls e.client(), so a
	// usage error never needs NATS.
	setup func(fs *flag.FlagSet) func(ctx context.Context, e *env) error
}

// commands lists the subcommands by name; add one file per command and one
// line here.
var commands = map[string]*command{
	"issue":    issueCommand,
	"refresh":  refreshCommand,
	"revoke":   revokeCommand,
	"keys":     keysCommand,
	"subjects": subjectsCommand,
	"clients":  clientsCommand,
	"ssf":      ssfCommand,

	"introspect": introspectCommand,
	"family":     familyCommand,
	"audit":      auditCommand,
	"rebuild":    rebuildCommand,

	"audit-token": auditTokenCommand,
}

// getenv is os.Getenv, replaceable in tests.
var getenv = os.Getenv

func main() {
	// SIGINT/SIGTERM end a follow or a rebuild cleanly; once the context is
	// done, stop restores the default so a second Ctrl-C kills a stuck run.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() { <-ctx.Done(); stop() }()
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// env is what a running command needs: its streams, the global flags and a
// lazily opened connection.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	json           bool
	natsURL        string
	prefix         string
	timeout        time.Duration
	auth           cli.Auth
	args           []string // the command's positional arguments

	nc *nats.Conn
	c  *client.Client
}

// client connects to NATS on first use. Its Timeout is --timeout, so each
// request of a long command (whose context has no deadline) is bounded.
func (e *env) client() (*client.Client, error) {
	if e.c != nil {
		return e.c, nil
	}
	opts, err := e.auth.Options()
	if err != nil {
		return nil, usagef("%v", err)
	}
	opts = append(opts, nats.Name("tokenctl"), nats.Timeout(e.timeout), nats.NoReconnect())
	nc, err := nats.Connect(e.natsURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", e.natsURL, err)
	}
	e.nc = nc
	e.c = client.New(nc, e.prefix)
	e.c.Timeout = e.timeout
	return e.c, nil
}

func (e *env) close() {
	if e.nc != nil {
		e.nc.Close()
	}
}

// usageError is a bad invocation: exit status 2.
type usageError struct{ msg string }

func (u *usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// run is main without the process: it returns the exit status (0 ok,
// 1 failure, 2 usage error). Cancelling ctx interrupts the command.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	global := flag.NewFlagSet("tokenctl", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	global.StringVar(&e.natsURL, "nats-url", defaultURL(), "NATS server `URL` (default $TOKENCTL_NATS_URL, else $NATS_URL, else "+defaultNATSURL+")")
	global.StringVar(&e.prefix, "prefix", client.DefaultPrefix, "subject prefix `P` of the tokend deployment")
	global.DurationVar(&e.timeout, "timeout", defaultTimeout, "give up after `D`, connecting included (audit and rebuild: each request)")
	global.BoolVar(&e.json, "json", false, "print the reply JSON exactly as received (for scripts)")
	version := global.Bool("version", false, "print the version and exit")
	e.auth.Declare(global)
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			mainUsage(stdout, global)
			return 0
		}
		fmt.Fprintf(stderr, "tokenctl: %v\n\n", err)
		mainUsage(stderr, global)
		return 2
	}
	if *version {
		fmt.Fprintln(stdout, api.VersionLine("tokenctl"))
		return 0
	}
	rest := global.Args()
	if len(rest) == 0 {
		mainUsage(stderr, global)
		return 2
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		return help(rest, stdout, stderr, global)
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "tokenctl: unknown command %q; run 'tokenctl help' for the list\n", name)
		return 2
	}

	fs := commandFlags(name)
	exec := cmd.setup(fs)
	fs.BoolVar(&e.json, "json", e.json, jsonUsage(cmd))
	acceptGlobals(fs, global)
	positional, err := parseInterleaved(fs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandUsage(stdout, name, cmd, fs, global)
			return 0
		}
		return usageFailure(stderr, name, err)
	}
	if *version {
		fmt.Fprintln(stdout, api.VersionLine("tokenctl"))
		return 0
	}
	if e.timeout <= 0 {
		fmt.Fprintln(stderr, "tokenctl: --timeout must be positive")
		return 2
	}
	if len(positional) > cmd.args {
		return usageFailure(stderr, name, fmt.Errorf("unexpected argument %q", positional[cmd.args]))
	}
	e.args = positional

	if !cmd.long {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.timeout)
		defer cancel()
	}
	defer e.close()
	err = exec(ctx, e)
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		return usageFailure(stderr, name, err)
	}
	reportError(e, err)
	return 1
}

// parseInterleaved parses fs from args and returns the positional arguments,
// which may come before, between or after the flags ("family ID --min-seq
// 5"); flag.Parse alone stops at the first one. After "--" everything is
// positional. An id that begins with "-" (a family id does one time in
// 64) is positional too, not an unknown flag.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional, flags []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			if err := fs.Parse(flags); err != nil {
				return nil, err
			}
			return append(positional, args[i+1:]...), nil
		case len(a) < 2 || a[0] != '-' || dashID(fs, a):
			positional = append(positional, a)
		default:
			flags = append(flags, a)
			if takesNextArg(fs, a) && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		}
	}
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	return positional, nil
}

// dashID reports whether a, which begins with "-", is an id rather than
// a flag: no flag of fs, and an id's shape (22 characters of base64url).
func dashID(fs *flag.FlagSet, a string) bool {
	if len(a) != 22 || fs.Lookup(a[1:]) != nil {
		return false
	}
	for _, c := range a[1:] {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// takesNextArg reports whether flag argument a ("-name" or "--name",
// without "=value") takes the next argument as its value.
func takesNextArg(fs *flag.FlagSet, a string) bool {
	name := strings.TrimLeft(a, "-")
	if strings.Contains(name, "=") {
		return false
	}
	f := fs.Lookup(name)
	if f == nil {
		return false
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return !ok || !b.IsBoolFlag()
}

// acceptGlobals lets the global flags follow the command too
// ("tokenctl audit --nats-url URL"): they are declared on the command's
// flag set as well, sharing their variables.
func acceptGlobals(fs, global *flag.FlagSet) {
	global.VisitAll(func(f *flag.Flag) {
		if fs.Lookup(f.Name) == nil {
			fs.Var(f.Value, f.Name, f.Usage)
		}
	})
}

func jsonUsage(cmd *command) string {
	if cmd.jsonHelp != "" {
		return cmd.jsonHelp + " (same as the global --json)"
	}
	return "print the reply JSON exactly as received (same as the global --json)"
}

func commandFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("tokenctl "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func usageFailure(stderr io.Writer, name string, err error) int {
	fmt.Fprintf(stderr, "tokenctl %s: %v\nRun 'tokenctl %s -h' for usage.\n", name, err, name)
	return 2
}

// reportError prints err for a human on stderr, and in --json mode the error
// body on stdout too, so a script reads the code from the same place as a
// success.
func reportError(e *env, err error) {
	var se *client.Error
	msg := err.Error()
	switch {
	case errors.As(err, &se):
		if e.json {
			data, _ := json.Marshal(wire.ErrorReply{Error: se.Code, Description: se.Description, RetryAfterMs: se.RetryAfterMs})
			fmt.Fprintf(e.stdout, "%s\n", data)
		}
		msg = se.Error()
		if se.RetryAfterMs > 0 {
			msg += fmt.Sprintf(" (retry after %v)", se.RetryAfter())
		}
	case errors.Is(err, nats.ErrNoResponders):
		msg += fmt.Sprintf(" (is tokend running with subject prefix %q on %s?)", e.prefix, e.natsURL)
	case errors.Is(err, context.DeadlineExceeded):
		msg += fmt.Sprintf(" (no answer within --timeout %v)", e.timeout)
	case errors.Is(err, context.Canceled):
		msg += " (interrupted)"
	}
	fmt.Fprintf(e.stderr, "tokenctl: %s\n", msg)
}

func defaultURL() string {
	for _, k := range []string{"TOKENCTL_NATS_URL", "NATS_URL"} {
		if v := getenv(k); v != "" {
			return v
		}
	}
	return defaultNATSURL
}

func help(args []string, stdout, stderr io.Writer, global *flag.FlagSet) int {
	if len(args) == 0 {
		mainUsage(stdout, global)
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "tokenctl: unknown command %q; run 'tokenctl help' for the list\n", args[0])
		return 2
	}
	fs := commandFlags(args[0])
	cmd.setup(fs)
	fs.Bool("json", false, jsonUsage(cmd))
	commandUsage(stdout, args[0], cmd, fs, global)
	return 0
}

func mainUsage(w io.Writer, global *flag.FlagSet) {
	fmt.Fprint(w, `tokenctl is the operator CLI of tokend (refresh-token rotation over NATS).

Usage:
  tokenctl [global flags] <command> [flags]

Global flags may also come after the command.

Commands:
`)
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-11s %s\n", name, commands[name].summary)
	}
	fmt.Fprintf(w, "  %-11s %s\n", "help", "show the usage of a command: tokenctl help <command>")
	fmt.Fprint(w, "\nGlobal flags:\n")
	cli.PrintFlags(w, global)
	fmt.Fprint(w, `
Output is human-readable by default; with --json the reply is printed exactly
as received. Failures print "tokenctl: <error>: <description>" on stderr and
exit 1; usage errors exit 2.
Run 'tokenctl <command> -h' for a command's flags.
`)
}

// commandUsage prints a command's usage; its own flags, not the global
// ones it also accepts.
func commandUsage(w io.Writer, name string, cmd *command, fs, global *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n\n%s.\n", strings.TrimSpace("tokenctl [global flags] "+name+" "+cmd.synopsis), upperFirst(cmd.summary))
	if cmd.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.help))
	}
	fmt.Fprint(w, "\nFlags:\n")
	cli.PrintFlags(w, fs, func(f *flag.Flag) bool { return f.Name == "json" || global.Lookup(f.Name) == nil })
	fmt.Fprint(w, "\nGlobal flags (--nats-url, --prefix, --timeout, --json, credentials) go before or after the command: tokenctl help.\n")
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
