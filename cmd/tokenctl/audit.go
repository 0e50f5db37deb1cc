package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/domain"
)

// eventTypes are the audit event types of the contract, for --type.
var eventTypes = []string{string(domain.TokenIssued), string(domain.TokenRotated), string(domain.TokenReused),
	string(domain.ReplayDetected), string(domain.KeyMismatch), string(domain.FamilyRevoked), string(domain.RefreshRejected),
	string(domain.FamilyArchived)}

var auditCommand = &command{
	summary: "list audit events: one page, all of them, or live",
	synopsis: "[--family ID] [--subject S] [--client-id C] [--presented-by C] [--type T]...\n" +
		"       [--since T] [--until T] [--limit N] [--after-seq N] [--min-seq N] [--all | --follow]",
	jsonHelp: "print JSON: a page as received; with --all/--follow one event per line",
	long:     true,
	help: `Prints the events matching every filter given, oldest first, as a table in
local time. CLIENT is the family's owner (--client-id); DETAIL names the
client that presented another client's token (--presented-by), the
generation of a replayed or refused token beside the family's (GEN), the
DPoP keys of a proof by another key than the family's and of a refusal
without a proof, and the proxy a caller came through. Event types (--type):
  token.issued, token.rotated, token.reused, token.replay_detected,
  token.key_mismatch, family.revoked, refresh.rejected, family.archived

--since (inclusive) and --until (exclusive) take an RFC 3339 time
(2026-01-02T15:04:05Z) or a duration back from now: 90m, 24h, 7d.

Without --all or --follow one page of at most --limit events is printed; the
next one starts with --after-seq set to the last SEQ. --all pages through
every matching event. --follow does too, then waits for new ones until
interrupted (Ctrl-C ends it with exit status 0).

With --json a single page is printed exactly as received; --all and --follow
print one event per line (JSON Lines). --timeout bounds each request, not
the whole listing.`,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		family := fs.String("family", "", "only the events of family `ID`")
		subject := fs.String("subject", "", "only the events of subject `S`")
		clientID := fs.String("client-id", "", "only the events of client `C`'s families")
		presentedBy := fs.String("presented-by", "", "only the events in which client `C` presented another client's token")
		var types stringList
		fs.Var(&types, "type", "only events of type `T` (repeatable)")
		since := fs.String("since", "", "only events at or after `T`: RFC 3339, or a duration back from now (24h, 7d)")
		until := fs.String("until", "", "only events before `T`: RFC 3339, or a duration back from now")
		limit := fs.Int("limit", wire.DefaultAuditLimit, fmt.Sprintf("page size `N`, 1..%d", wire.MaxAuditLimit))
		afterSeq := fs.Uint64("after-seq", 0, "start after stream sequence `N` (the SEQ of the last event seen)")
		minSeq := minSeqFlag(fs)
		all := fs.Bool("all", false, "page through every matching event")
		follow := fs.Bool("follow", false, "print every matching event, then new ones as they happen, until interrupted")
		return func(ctx context.Context, e *env) error {
			req := wire.AuditRequest{FamilyID: *family, Subject: *subject, ClientID: *clientID, PresentedBy: *presentedBy,
				Types: types, Limit: limit, AfterSeq: *afterSeq, MinSeq: *minSeq}
			// An empty filter would list everyone's events: refuse it rather
			// than let `--family "$UNSET"` widen a search.
			for _, name := range []string{"family", "subject", "client-id", "presented-by"} {
				if isSet(fs, name) && fs.Lookup(name).Value.String() == "" {
					return usagef("--%s must not be empty", name)
				}
			}
			for _, t := range types {
				if !slices.Contains(eventTypes, t) {
					return usagef("unknown --type %q; one of %s", t, strings.Join(eventTypes, ", "))
				}
			}
			if *limit < 1 || *limit > wire.MaxAuditLimit {
				return usagef("--limit must be 1..%d", wire.MaxAuditLimit)
			}
			now := time.Now()
			var err error
			if req.Since, err = timeArg("since", *since, now); err != nil {
				return err
			}
			if req.Until, err = timeArg("until", *until, now); err != nil {
				return err
			}

			c, err := e.client()
			if err != nil {
				return err
			}
			table := newEventTable(e)
			if *all || *follow {
				return listAudit(ctx, e, c, req, *follow, table.print)
			}
			page, raw, err := auditPage(ctx, e, c, req)
			if err != nil {
				return err
			}
			if e.json {
				printRaw(e.stdout, raw)
				return nil
			}
			if err := table.print(page.Events); err != nil {
				return err
			}
			// tokend also ends a page early when its events reach a size bound.
			if len(page.Events) == *limit || len(raw) > wire.MaxAuditPageBytes/2 {
				fmt.Fprintf(e.stderr, "tokenctl: more events may follow: add --after-seq %d for the next page, or --all\n", page.NextAfterSeq)
			}
			return nil
		}
	},
}

// timeArg turns --since/--until into the RFC 3339 UTC time tokend expects:
// v is RFC 3339, or a duration back from now (Go syntax, or whole days: 7d).
func timeArg(name, v string, now time.Time) (string, error) {
	if v == "" {
		return "", nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UTC().Format(time.RFC3339Nano), nil
	}
	d, err := time.ParseDuration(v)
	if days, ok := strings.CutSuffix(v, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		d = time.Duration(n) * 24 * time.Hour
	}
	if err != nil || d < 0 {
		return "", usagef("--%s %q: want an RFC 3339 time (2026-01-02T15:04:05Z) or a duration back from now (90m, 24h, 7d)", name, v)
	}
	return now.Add(-d).UTC().Format(time.RFC3339), nil
}

// longPoll is how long tokend holds a query whose min_seq its read model has
// not reached before answering temporarily_unavailable.
const longPoll = 2 * time.Second

// auditReply is a query.audit reply with the events kept as received, so
// --json can print them unchanged.
type auditReply struct {
	Events       []json.RawMessage `json:"events"`
	NextAfterSeq uint64            `json:"next_after_seq"`
	AsOfSeq      uint64            `json:"as_of_seq"`
}

// auditPage asks for one page, within --timeout plus the time tokend may
// hold a request that waits for min_seq.
func auditPage(ctx context.Context, e *env, c *client.Client, req wire.AuditRequest) (auditReply, json.RawMessage, error) {
	budget := e.timeout
	if req.MinSeq > 0 {
		budget += longPoll
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	var raw json.RawMessage
	if err := c.Request(ctx, client.SubjectAudit, req, &raw); err != nil {
		return auditReply{}, nil, err
	}
	var page auditReply
	if err := json.Unmarshal(raw, &page); err != nil {
		return auditReply{}, nil, fmt.Errorf("%s: decode reply: %w", c.Subject(client.SubjectAudit), err)
	}
	return page, raw, nil
}

// listAudit sends req page after page from req.AfterSeq, handing each page's
// events to out, until an empty page. With follow it never stops on its own:
// once caught up it asks with min_seq past the read model's position, which
// tokend answers as soon as a new event is applied, or after longPoll with
// temporarily_unavailable, meaning nothing new yet. Cancelling ctx then ends
// it without error. req.Limit must be set.
func listAudit(ctx context.Context, e *env, c *client.Client, req wire.AuditRequest, follow bool, out func([]json.RawMessage) error) error {
	for {
		page, _, err := auditPage(ctx, e, c, req)
		var se *client.Error
		switch {
		case follow && ctx.Err() != nil:
			return nil
		case follow && errors.As(err, &se) && se.Code == client.CodeTemporarilyUnavailable:
			if !sleep(ctx, retryDelay(se)) {
				return nil
			}
			continue
		case err != nil:
			return err
		}
		if err := out(page.Events); err != nil {
			return err
		}
		n := len(page.Events)
		if n > 0 {
			if page.NextAfterSeq <= req.AfterSeq { // would ask for the same page forever
				return fmt.Errorf("%s: next_after_seq %d does not advance past %d", c.Subject(client.SubjectAudit), page.NextAfterSeq, req.AfterSeq)
			}
			req.AfterSeq = page.NextAfterSeq
		}
		switch {
		case !follow && n == 0:
			return nil
		case follow && n == 0:
			// Every match up to as_of_seq is out: wait for more. (A short
			// page is not the end: tokend cuts pages by size too.)
			req.MinSeq = page.AsOfSeq + 1
		default:
			req.MinSeq = 0
		}
	}
}

// retryDelay is the wait before asking again after temporarily_unavailable:
// tokend's hint, bounded so as neither to hammer it nor to stall a tail.
func retryDelay(se *client.Error) time.Duration {
	return min(max(se.RetryAfter(), 100*time.Millisecond), 5*time.Second)
}

// sleep waits d, or returns false as soon as ctx ends.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// eventTable prints audit events as they arrive: table rows under one
// header, or in --json mode one compact event per line.
type eventTable struct {
	e      *env
	tw     *tabwriter.Writer
	header bool
	// widths are the widest cells so far, per column: tabwriter aligns only
	// what one Flush writes, and each page is flushed on its own.
	widths []int
}

var eventColumns = []string{"SEQ", "TIME", "TYPE", "FAMILY", "SUBJECT", "CLIENT", "GEN", "REASON", "IP", "DETAIL"}

func newEventTable(e *env) *eventTable {
	t := &eventTable{e: e, tw: tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0), widths: make([]int, len(eventColumns))}
	// Room for the longest type and reason from the start, so that a later
	// page of --follow does not shift the columns under the header.
	for _, typ := range eventTypes {
		t.widths[2] = max(t.widths[2], len(typ))
	}
	for _, reason := range []string{domain.ReasonReplayDetected, domain.ReasonDPoPKeyMismatch, domain.ReasonDPoPProofMissing} {
		t.widths[7] = max(t.widths[7], len(reason))
	}
	return t
}

// print writes one page, flushed at once so --follow shows events as they
// happen.
func (t *eventTable) print(events []json.RawMessage) error {
	if t.e.json {
		for _, raw := range events {
			var line bytes.Buffer
			if err := json.Compact(&line, raw); err != nil {
				return fmt.Errorf("decode event: %w", err)
			}
			line.WriteByte('\n')
			if _, err := t.e.stdout.Write(line.Bytes()); err != nil {
				return err
			}
		}
		return nil
	}
	var rows [][]string
	if !t.header {
		rows = append(rows, eventColumns)
		t.header = true
	}
	for _, raw := range events {
		ev, err := decodeEvent(raw)
		if err != nil {
			return err
		}
		rows = append(rows, []string{fmt.Sprint(ev.Seq), tableTime(ev.Time), cell(ev.Type), cell(ev.FamilyID),
			cell(erasedMark(ev.Subject, ev.Erased)), cell(ev.ClientID), fmt.Sprint(ev.Generation), cell(ev.Reason), cell(contextIP(ev.Context)),
			cell(eventDetail(ev))})
	}
	for _, r := range rows {
		for i, c := range r {
			t.widths[i] = max(t.widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range rows {
		padded := make([]string, len(r))
		for i, c := range r {
			padded[i] = c
			if i < len(r)-1 {
				padded[i] += strings.Repeat(" ", t.widths[i]-utf8.RuneCountInString(c))
			}
		}
		fmt.Fprintln(t.tw, strings.Join(padded, "\t"))
	}
	return t.tw.Flush()
}

func decodeEvent(raw json.RawMessage) (wire.AuditEvent, error) {
	var ev wire.AuditEvent
	if err := json.Unmarshal(raw, &ev); err != nil {
		return ev, fmt.Errorf("decode event: %w", err)
	}
	return ev, nil
}

// contextIP returns the ip recorded in an event's context, "" if none.
func contextIP(raw json.RawMessage) string { return contextValue(raw, "ip") }

func contextValue(raw json.RawMessage, key string) string {
	var c map[string]any
	if json.Unmarshal(raw, &c) != nil {
		return ""
	}
	v, _ := c[key].(string)
	return v
}

// eventDetail says in words what the columns leave out: which client
// presented another's token, which generation a replayed or refused token
// was when it is not the family's, the DPoP keys of a refusal for want of
// the family's key, a lost rotation, and the proxy the caller came
// through.
func eventDetail(ev wire.AuditEvent) string {
	var parts []string
	if dpop := dpopDetail(ev); dpop != "" {
		parts = append(parts, dpop)
	}
	if ev.Reason == domain.ReasonLostRotation && ev.Type == string(domain.RefreshRejected) {
		parts = append(parts, "a lost reply's retry, after the reuse interval")
	}
	switch {
	case ev.PresentedBy != "" && ev.PresentedGeneration != 0:
		parts = append(parts, fmt.Sprintf("presented by %s (generation %d)", ev.PresentedBy, ev.PresentedGeneration))
	case ev.PresentedBy != "":
		parts = append(parts, "presented by "+ev.PresentedBy)
	case ev.PresentedGeneration != 0 && ev.PresentedGeneration != ev.Generation:
		parts = append(parts, fmt.Sprintf("generation %d presented, family at generation %d", ev.PresentedGeneration, ev.Generation))
	}
	if proxy := contextValue(ev.Context, "proxy_ip"); proxy != "" {
		parts = append(parts, "via proxy "+proxy)
	}
	return strings.Join(parts, ", ")
}

// dpopDetail describes the events that a DPoP key decided (RFC 9449): a
// proof by another key than the family's, the revocation that follows
// it, and a refresh without a proof; "" for any other event.
func dpopDetail(ev wire.AuditEvent) string {
	switch {
	case ev.Type == string(domain.KeyMismatch):
		return fmt.Sprintf("proof by key %s, family bound to %s", ev.PresentedJKT, ev.DPoPJKT)
	case ev.Reason == domain.ReasonDPoPKeyMismatch:
		return "after a proof by another key, family bound to " + ev.DPoPJKT
	case ev.Reason == domain.ReasonDPoPProofMissing && ev.DPoPJKT != "":
		return "no DPoP proof, family bound to " + ev.DPoPJKT
	case ev.Reason == domain.ReasonDPoPProofMissing:
		return "no DPoP proof, which the client must send"
	}
	return ""
}

// erasedMark is a subject as the tables show it: an erased subject's
// pseudonym says so.
func erasedMark(subject string, erased bool) string {
	if erased {
		return subject + " (erased)"
	}
	return subject
}
