package projections

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/queries"
)

// Reader answers queries from the read model. Every answer carries AsOfSeq,
// read before the query runs, so it never claims more than the query saw.
type Reader struct {
	db  *DB
	p   *Projector
	now func() time.Time
}

// NewReader returns a reader over db, fed by p.
func NewReader(db *DB, p *Projector, now func() time.Time) *Reader {
	return &Reader{db: db, p: p, now: now}
}

// maxTokenBytes keeps hostile input from being hashed at length; no real
// token comes near it.
const maxTokenBytes = 1024

// Introspect reports whether token is its family's current token in a
// family that is neither revoked nor expired.
func (r *Reader) Introspect(ctx context.Context, token string) (wire.Introspection, error) {
	asOf := r.p.Applied()
	inactive := wire.Introspection{AsOfSeq: asOf}
	if len(token) > maxTokenBytes {
		return inactive, nil
	}
	row, err := r.db.R.CurrentToken(ctx, domain.HashToken(token))
	if errors.Is(err, sql.ErrNoRows) {
		return inactive, nil
	}
	if err != nil {
		return wire.Introspection{}, err
	}
	f := familyOf(row.Family)
	if f.StatusAt(r.now()) != domain.StatusActive {
		return inactive, nil
	}
	scope := domain.ScopeString(f.Scope)
	return wire.Introspection{Active: true, FamilyID: f.ID, Sub: f.Subject, ClientID: f.ClientID, Scope: &scope,
		Aud: f.Audience, Exp: f.ExpiresAt().Unix(), Iat: time.Unix(0, row.TokenIssuedAt).Unix(),
		TokenType: "refresh_token", AsOfSeq: asOf}, nil
}

// Family returns a family's view, or an ENotFound error.
func (r *Reader) Family(ctx context.Context, familyID string) (wire.FamilyView, error) {
	asOf := r.p.Applied()
	row, err := r.db.R.GetFamily(ctx, familyID)
	if errors.Is(err, sql.ErrNoRows) {
		return wire.FamilyView{}, domain.Errorf(domain.ENotFound, "no family %q", familyID)
	}
	if err != nil {
		return wire.FamilyView{}, err
	}
	toks, err := r.db.R.FamilyTokens(ctx, familyID)
	if err != nil {
		return wire.FamilyView{}, err
	}
	f := familyOf(row)
	v := wire.FamilyView{FamilyID: f.ID, Subject: f.Subject, ClientID: f.ClientID, Scope: domain.ScopeString(f.Scope),
		Audience: f.Audience, Status: string(f.StatusAt(r.now())), Generation: f.Generation, CreatedAt: f.CreatedAt,
		LastUsedAt: f.LastUsedAt, ExpiresAt: f.ExpiresAt(), RevokedReason: f.RevokedReason, AsOfSeq: asOf,
		Tokens: make([]wire.TokenView, len(toks))}
	if f.Status == domain.StatusRevoked {
		v.RevokedAt = &f.RevokedAt
	}
	for i, t := range toks {
		tv := wire.TokenView{Generation: uint64(t.Generation), Status: "active", IssuedAt: unixNano(t.IssuedAt)}
		switch {
		case t.RotatedAt != 0:
			at := unixNano(t.RotatedAt)
			tv.Status, tv.RotatedAt = "rotated", &at
		case f.Status == domain.StatusRevoked:
			tv.Status = "revoked"
		}
		v.Tokens[i] = tv
	}
	return v, nil
}

// AuditFilter selects audit events; zero fields do not filter.
type AuditFilter struct {
	FamilyID, Subject, ClientID string
	Types                       []string
	Since, Until                time.Time
	AfterSeq                    uint64
	Limit                       int
}

// Audit returns the events matching f after f.AfterSeq, at most f.Limit.
func (r *Reader) Audit(ctx context.Context, f AuditFilter) (wire.AuditPage, error) {
	asOf := r.p.Applied()
	types := ""
	if len(f.Types) > 0 {
		b, _ := json.Marshal(f.Types)
		types = string(b)
	}
	since, until := int64(0), int64(1<<63-1)
	if !f.Since.IsZero() {
		since = f.Since.UnixNano()
	}
	if !f.Until.IsZero() {
		until = f.Until.UnixNano()
	}
	after, limit := int64(f.AfterSeq), int64(f.Limit)
	var (
		rows []queries.AuditEvent
		err  error
	)
	switch {
	case f.FamilyID != "":
		rows, err = r.db.R.AuditByFamily(ctx, queries.AuditByFamilyParams{FamilyID: f.FamilyID, AfterSeq: after,
			Subject: f.Subject, ClientID: f.ClientID, Types: types, Since: since, Until: until, Lim: limit})
	case f.Subject != "":
		rows, err = r.db.R.AuditBySubject(ctx, queries.AuditBySubjectParams{Subject: f.Subject, AfterSeq: after,
			ClientID: f.ClientID, Types: types, Since: since, Until: until, Lim: limit})
	case f.ClientID != "":
		rows, err = r.db.R.AuditByClient(ctx, queries.AuditByClientParams{ClientID: f.ClientID, AfterSeq: after,
			Types: types, Since: since, Until: until, Lim: limit})
	case len(f.Types) > 0 && !slices.ContainsFunc(f.Types, commonType):
		rows, err = r.db.R.AuditByTypes(ctx, queries.AuditByTypesParams{Types: types, AfterSeq: after, Since: since, Until: until, Lim: limit})
	case !f.Since.IsZero() || !f.Until.IsZero():
		rows, err = r.db.R.AuditByTime(ctx, queries.AuditByTimeParams{Since: since, Until: until, AfterSeq: after, Types: types, Lim: limit})
	case len(f.Types) > 0:
		rows, err = r.db.R.AuditByTypes(ctx, queries.AuditByTypesParams{Types: types, AfterSeq: after, Since: since, Until: until, Lim: limit})
	default:
		rows, err = r.db.R.AuditAll(ctx, queries.AuditAllParams{AfterSeq: after, Lim: limit})
	}
	if err != nil {
		return wire.AuditPage{}, err
	}
	page := wire.AuditPage{Events: make([]wire.AuditEvent, len(rows)), AsOfSeq: asOf}
	for i, e := range rows {
		page.Events[i] = wire.AuditEvent{Seq: uint64(e.Seq), ID: e.ID, Type: e.Type, Time: unixNano(e.Time),
			FamilyID: e.FamilyID, Subject: e.Subject, ClientID: e.ClientID, Generation: uint64(e.Generation),
			Reason: e.Reason, Context: json.RawMessage(e.Context)}
		page.NextAfterSeq = uint64(e.Seq)
	}
	return page, nil
}

// commonType reports whether events of type t make up most of the stream,
// so that reading them by the type index saves nothing over a time window.
func commonType(t string) bool {
	return t == string(domain.TokenRotated) || t == string(domain.TokenIssued) || t == string(domain.TokenReused)
}

// RevocableFamilies lists the unrevoked families of a subject or a client
// (exactly one of them set), as of the projection's position.
func (r *Reader) RevocableFamilies(ctx context.Context, subject, clientID string) ([]string, error) {
	if subject != "" {
		return r.db.R.RevocableFamiliesBySubject(ctx, subject)
	}
	return r.db.R.RevocableFamiliesByClient(ctx, clientID)
}

func familyOf(row queries.Family) domain.Family {
	var aud []string
	json.Unmarshal([]byte(row.Audience), &aud)
	f := domain.Family{ID: row.FamilyID, Subject: row.Subject, ClientID: row.ClientID, Scope: splitScope(row.Scope),
		Audience: nonNil(aud), Status: domain.Status(row.Status), Generation: uint64(row.Generation),
		CurrentHash: row.CurrentHash, CreatedAt: unixNano(row.CreatedAt), LastUsedAt: unixNano(row.LastUsedAt),
		IdleExpiresAt: unixNano(row.IdleExpiresAt), AbsoluteExpiresAt: unixNano(row.AbsoluteExpiresAt),
		RevokedReason: row.RevokedReason}
	if row.RevokedAt.Valid {
		f.RevokedAt = unixNano(row.RevokedAt.Int64)
	}
	return f
}

func splitScope(s string) []string {
	scope, _ := domain.ParseScope(s)
	return scope
}

func unixNano(n int64) time.Time { return time.Unix(0, n).UTC() }

// ActiveFamilies counts the families neither revoked nor expired.
func (r *Reader) ActiveFamilies(ctx context.Context) (int64, error) {
	return r.db.R.CountActiveFamilies(ctx, r.now().UnixNano())
}
