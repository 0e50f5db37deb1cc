// Package cli holds what the command-line tools tokenctl and tokenbench
// share: the flags that log in to a locked-down NATS deployment, GNU-style
// flag help, and terminal detection for progress lines.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
)

// Auth are the ways to log in to a locked-down NATS deployment (see
// ops/nats/auth.conf): credentials, TLS, and the role's private inbox prefix.
type Auth struct {
	creds, nkey            string
	tlsCA, tlsCert, tlsKey string
	inboxPrefix            string
}

// Declare adds the login flags to fs.
func (a *Auth) Declare(fs *flag.FlagSet) {
	fs.StringVar(&a.creds, "creds", "", "authenticate with this NATS credentials (JWT) `FILE`")
	fs.StringVar(&a.nkey, "nkey", "", "authenticate with the nkey seed in `FILE`")
	fs.StringVar(&a.tlsCA, "tls-ca", "", "verify the server against the CA certificates in this PEM `FILE`")
	fs.StringVar(&a.tlsCert, "tls-cert", "", "client certificate PEM `FILE` for mutual TLS (with --tls-key)")
	fs.StringVar(&a.tlsKey, "tls-key", "", "private key PEM `FILE` of --tls-cert")
	fs.StringVar(&a.inboxPrefix, "inbox-prefix", "", "reply subject `PREFIX` your NATS user may subscribe to, e.g. _INBOX_admin (default _INBOX)")
}

// Options turns the parsed flags into connect options; an error is a bad
// combination or an unreadable nkey seed.
func (a *Auth) Options() ([]nats.Option, error) {
	var opts []nats.Option
	if a.creds != "" {
		opts = append(opts, nats.UserCredentials(a.creds))
	}
	if a.nkey != "" {
		opt, err := nats.NkeyOptionFromSeed(a.nkey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, opt)
	}
	if a.tlsCA != "" {
		opts = append(opts, nats.RootCAs(a.tlsCA))
	}
	if (a.tlsCert == "") != (a.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if a.tlsCert != "" {
		opts = append(opts, nats.ClientCert(a.tlsCert, a.tlsKey))
	}
	if a.inboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(a.inboxPrefix))
	}
	return opts, nil
}

// PrintFlags is flag.PrintDefaults with GNU-style double dashes, for the
// flags show accepts (all when nil).
func PrintFlags(w io.Writer, fs *flag.FlagSet, show ...func(*flag.Flag) bool) {
	fs.VisitAll(func(f *flag.Flag) {
		if len(show) > 0 && !show[0](f) {
			return
		}
		arg, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if arg != "" {
			line += " " + arg
		}
		fmt.Fprintf(w, "%s\n    \t%s", line, strings.ReplaceAll(usage, "\n", "\n    \t"))
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && !strings.Contains(usage, "(default") {
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

// IsTerminal reports whether w is a character device (a terminal), where
// redrawing a line with \r works.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
