package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/tokend/tokend/api/wire"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// contextFlags declares --ip and --user-agent, recorded by tokend for audit.
func contextFlags(fs *flag.FlagSet) func() map[string]string {
	ip := fs.String("ip", "", "client `IP` address, recorded in the audit trail")
	ua := fs.String("user-agent", "", "client user agent (`UA`), recorded in the audit trail")
	return func() map[string]string {
		c := map[string]string{}
		if *ip != "" {
			c["ip"] = *ip
		}
		if *ua != "" {
			c["user_agent"] = *ua
		}
		if len(c) == 0 {
			return nil
		}
		return c
	}
}

// isSet reports whether the flag name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// maxStdinToken bounds a token read from stdin; real ones are well under 1 KiB.
const maxStdinToken = 64 << 10

// tokenArg returns the token given as flag value v, reading it from stdin
// when v is "-" (so it stays out of shell history and ps).
func tokenArg(e *env, flagName, v string) (string, error) {
	if v != "-" {
		return v, nil
	}
	data, err := io.ReadAll(io.LimitReader(e.stdin, maxStdinToken+1))
	if err != nil {
		return "", fmt.Errorf("read --%s from stdin: %w", flagName, err)
	}
	if len(data) > maxStdinToken {
		return "", usagef("--%s -: stdin holds more than %d bytes", flagName, maxStdinToken)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", usagef("--%s -: stdin is empty", flagName)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", usagef("--%s -: stdin must hold one token", flagName)
	}
	return tok, nil
}

// printRaw writes a reply exactly as received, newline-terminated.
func printRaw(w io.Writer, raw []byte) {
	w.Write(raw)
	if !bytes.HasSuffix(raw, []byte("\n")) {
		io.WriteString(w, "\n")
	}
}

// printKV writes aligned "key: value" lines.
func printKV(w io.Writer, rows [][2]string) {
	width := 0
	for _, r := range rows {
		width = max(width, len(r[0])+1)
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%-*s %s\n", width, r[0]+":", r[1])
	}
}

// shortToken shows enough of a token to tell it apart, for human output.
func shortToken(t string) string {
	const keep = 24
	if len(t) <= keep+8 {
		return t
	}
	return t[:keep] + "…"
}

// saveFlag declares --save, which keeps the new refresh token in a file
// rather than in the terminal's scrollback and the shell history.
func saveFlag(fs *flag.FlagSet) *string {
	return fs.String("save", "", "write the new refresh token to `FILE` (mode 0600) instead of printing it;\n"+
		"read it back with --token - < FILE")
}

// saveJSONHelp is --json's usage in the commands with --save.
const saveJSONHelp = "print the reply JSON as received; with --save, without \"refresh_token\" (it is in FILE)"

// printTokenReply prints an issue or refresh answer (raw in --json mode,
// else aligned lines with the access token shortened). With save set, the
// refresh token goes to that file instead of stdout; if the file cannot be
// written it is printed after all: the rotation has happened, so a failed
// write must not lose the new token.
func printTokenReply(e *env, raw json.RawMessage, save string) error {
	var r wire.TokenReply
	if err := json.Unmarshal(raw, &r); err != nil {
		if e.json {
			printRaw(e.stdout, raw)
		}
		return fmt.Errorf("decode reply: %w", err)
	}
	var saveErr error
	if save != "" {
		saveErr = writeSecretFile(save, r.RefreshToken+"\n")
	}
	saved := save != "" && saveErr == nil
	if e.json {
		if saved {
			raw = withoutRefreshToken(raw)
		}
		printRaw(e.stdout, raw)
	} else {
		refresh := r.RefreshToken
		if saved {
			refresh = "written to " + save
		}
		scope := r.Scope
		if scope == "" {
			scope = "(none)"
		}
		expires := r.RefreshTokenExpiresAt
		if t, err := time.Parse(time.RFC3339, expires); err == nil {
			expires = localTime(t)
		}
		printKV(e.stdout, [][2]string{
			{"family", r.FamilyID},
			{"refresh_token", refresh},
			{"access_token", shortToken(r.AccessToken)},
			{"scope", scope},
			{"expires_in", fmt.Sprintf("%ds", r.ExpiresIn)},
			{"refresh expires", expires},
			{"seq", fmt.Sprint(r.Seq)},
		})
	}
	if saveErr != nil {
		return fmt.Errorf("--save: %w (the refresh token is printed above instead)", saveErr)
	}
	return nil
}

// withoutRefreshToken returns a token reply, a JSON object, without its
// refresh_token member; the other members keep their values, in key order.
func withoutRefreshToken(raw json.RawMessage) json.RawMessage {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		return raw // unreachable: raw decoded as a wire.TokenReply
	}
	delete(members, "refresh_token")
	out, _ := json.Marshal(members) // cannot fail: every value is valid JSON
	return out
}

// writeSecretFile replaces path with data, readable by the owner only. It
// writes a temporary file next to it and renames it, so a reader (or the
// same command, reading --token - from path) never sees half a token.
func writeSecretFile(path, data string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// Human output shows times in the local zone: with the zone in key: value
// lines, without it in table cells, where it would repeat on every row.
const (
	timeLayout      = "2006-01-02 15:04:05 MST"
	tableTimeLayout = "2006-01-02 15:04:05"
)

func localTime(t time.Time) string { return t.Local().Format(timeLayout) }

func tableTime(t time.Time) string { return t.Local().Format(tableTimeLayout) }

// minSeqFlag declares --min-seq, the read-your-writes token of the queries.
func minSeqFlag(fs *flag.FlagSet) *uint64 {
	return fs.Uint64("min-seq", 0, "wait (up to 2 s) until the read model has applied stream sequence `N`,\n"+
		"e.g. the seq printed by issue, refresh or revoke")
}

// cell makes a value safe and visible in human output: "-" when empty, and
// any control character (a tab would break the columns, an escape sequence
// could rewrite the terminal) replaced. tokend refuses such input, but the
// audit trail is exactly what should not be trusted blindly.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '\uFFFD'
	}, s)
}

// show sends req on subject and prints the reply: as received with
// --json, else decoded as T by human.
func show[T any](ctx context.Context, e *env, subject string, req any, human func(T) error) error {
	var raw json.RawMessage
	if err := e.c.Request(ctx, subject, req, &raw); err != nil {
		return err
	}
	if e.json {
		printRaw(e.stdout, raw)
		return nil
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("decode reply: %w", err)
	}
	return human(v)
}
