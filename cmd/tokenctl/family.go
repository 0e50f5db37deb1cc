package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/domain"
)

var familyCommand = &command{
	summary:  "show a family: its grant and status, and a timeline of its chain and audit events",
	synopsis: "ID [--min-seq N]",
	args:     1,
	jsonHelp: "print the family reply exactly as received, without the audit events",
	help: `Prints the family's grant, status, lifetimes and the DPoP key it is bound
to (RFC 9449), if any, then one timeline, oldest first, in local time: a
line per generation of the chain (the event that issued it, from which IP,
its status and when it was rotated), merged with the family's other audit
events (reuse, replay, key mismatch, rejected refreshes, revocation) with
their reason and IP. DETAIL names the client that presented another
client's token, the generation of a replayed or refused token beside the
family's, the key of a proof by another key than the family's, and the
proxy a caller came through.

Family ids may start with "-": put such an id after --, as in
  tokenctl family -- -x9Qm2...

With --json only the family reply is printed, exactly as received; for the
events as JSON use: tokenctl audit --family ID --all --json`,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		minSeq := minSeqFlag(fs)
		return func(ctx context.Context, e *env) error {
			if len(e.args) == 0 || e.args[0] == "" {
				return usagef("the family ID is required")
			}
			id := e.args[0]
			c, err := e.client()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.Request(ctx, client.SubjectFamily, wire.FamilyRequest{FamilyID: id, MinSeq: *minSeq}, &raw); err != nil {
				return err
			}
			if e.json {
				printRaw(e.stdout, raw)
				return nil
			}
			var f wire.FamilyView
			if err := json.Unmarshal(raw, &f); err != nil {
				return fmt.Errorf("decode reply: %w", err)
			}
			// min_seq: the events at least as recent as the view, even from
			// another tokend instance whose read model lags behind.
			limit := wire.MaxAuditLimit
			var evs []wire.AuditEvent
			err = listAudit(ctx, e, c, wire.AuditRequest{FamilyID: id, Limit: &limit, MinSeq: f.AsOfSeq}, false,
				func(page []json.RawMessage) error {
					for _, raw := range page {
						ev, err := decodeEvent(raw)
						if err != nil {
							return err
						}
						evs = append(evs, ev)
					}
					return nil
				})
			if err != nil {
				return err
			}
			printFamily(e.stdout, f, evs)
			return nil
		}
	},
}

func printFamily(w io.Writer, f wire.FamilyView, evs []wire.AuditEvent) {
	scope, aud := f.Scope, strings.Join(f.Audience, ", ")
	if scope == "" {
		scope = "(none)"
	}
	if aud == "" {
		aud = "(none)"
	}
	rows := [][2]string{
		{"family", cell(f.FamilyID)},
		{"subject", cell(erasedMark(f.Subject, f.Erased))},
		{"client", cell(f.ClientID)},
		{"scope", cell(scope)},
		{"audience", cell(aud)},
		{"status", cell(f.Status)},
		{"generation", fmt.Sprint(f.Generation)},
		{"created", localTime(f.CreatedAt)},
		{"last used", localTime(f.LastUsedAt)},
		{"expires", localTime(f.ExpiresAt)},
	}
	if f.DPoPJKT != "" {
		rows = append(rows, [2]string{"bound to", cell("DPoP key " + f.DPoPJKT)})
	}
	if f.RevokedAt != nil {
		rows = append(rows, [2]string{"revoked at", localTime(*f.RevokedAt)})
	}
	if f.RevokedReason != "" {
		rows = append(rows, [2]string{"revoked reason", cell(f.RevokedReason)})
	}
	rows = append(rows, [2]string{"as_of_seq", fmt.Sprint(f.AsOfSeq)})
	printKV(w, rows)

	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tGEN\tEVENT\tTOKEN\tROTATED\tREASON\tIP\tDETAIL")
	for _, r := range timeline(f.Tokens, evs) {
		fmt.Fprintln(tw, strings.Join(r.cells, "\t"))
	}
	tw.Flush()
}

type timelineRow struct {
	at    time.Time
	seq   uint64 // orders rows of the same instant; 0 when unknown
	cells []string
}

// timeline merges the chain with the audit events, oldest first. The event
// that created a generation (token.issued for 1, token.rotated for the
// others) shares its line, giving it an IP; every other event gets its own.
func timeline(tokens []wire.TokenView, evs []wire.AuditEvent) []timelineRow {
	creator := map[uint64]int{} // generation -> index in evs
	for i, ev := range evs {
		if ev.Type == string(domain.TokenIssued) || ev.Type == string(domain.TokenRotated) {
			creator[ev.Generation] = i
		}
	}
	used := make([]bool, len(evs))
	var rows []timelineRow
	for _, t := range tokens {
		r := timelineRow{at: t.IssuedAt}
		typ, reason, ip, detail := string(domain.TokenRotated), "", "", ""
		if t.Generation == 1 {
			typ = string(domain.TokenIssued)
		}
		if i, ok := creator[t.Generation]; ok {
			used[i] = true
			ev := evs[i]
			r.seq, typ, reason, ip, detail = ev.Seq, ev.Type, ev.Reason, contextIP(ev.Context), eventDetail(ev)
		}
		rotated := "-"
		if t.RotatedAt != nil {
			rotated = tableTime(*t.RotatedAt)
		}
		r.cells = []string{tableTime(t.IssuedAt), fmt.Sprint(t.Generation), typ, cell(t.Status), rotated, cell(reason), cell(ip), cell(detail)}
		rows = append(rows, r)
	}
	for i, ev := range evs {
		if used[i] {
			continue
		}
		rows = append(rows, timelineRow{at: ev.Time, seq: ev.Seq, cells: []string{tableTime(ev.Time), fmt.Sprint(ev.Generation),
			cell(ev.Type), "-", "-", cell(ev.Reason), cell(contextIP(ev.Context)), cell(eventDetail(ev))}})
	}
	slices.SortStableFunc(rows, func(a, b timelineRow) int {
		return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.seq, b.seq))
	})
	return rows
}
