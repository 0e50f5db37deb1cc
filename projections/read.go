package projections

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"time"

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

// Introspection is what the read model knows of a presented refresh token:
// whether it is its family's current token in a family neither revoked nor
// expired and, if so, the family's grant and the token's times.
type Introspection struct {
	Active                      bool
	FamilyID, Subject, ClientID string
	Scope                       string
	Audience                    []string
	ExpiresAt, IssuedAt         time.Time
	AsOfSeq                     uint64
}

// Introspect reports whether token is its family's current token in a
// family that is neither revoked nor expired.
func (r *Reader) Introspect(ctx context.Context, token string) (Introspection, error) {
	asOf := r.p.Applied()
	inactive := Introspection{AsOfSeq: asOf}
	if len(token) > maxTokenBytes {
		return inactive, nil
	}
	row, err := r.db.R.CurrentToken(ctx, domain.HashToken(token))
	if errors.Is(err, sql.ErrNoRows) {
		return inactive, nil
	}
	if err != nil {
		return Introspection{}, err
	}
	f := familyOf(row.Family)
	if f.StatusAt(r.now()) != domain.StatusActive {
		return inactive, nil
	}
	return Introspection{Active: true, FamilyID: f.ID, Subject: f.Subject, ClientID: f.ClientID,
		Scope: domain.ScopeString(f.Scope), Audience: f.Audience, ExpiresAt: f.ExpiresAt(),
		IssuedAt: unixNano(row.TokenIssuedAt), AsOfSeq: asOf}, nil
}

// FamilyView is a family as of the read model's position, with its chain
// of tokens, oldest first.
type FamilyView struct {
	FamilyID, Subject, ClientID, Scope string
	Audience                           []string
	Status                             domain.Status // as of now: active, revoked or expired
	Generation                         uint64
	CreatedAt, LastUsedAt, ExpiresAt   time.Time
	RevokedAt                          *time.Time // nil unless revoked
	RevokedReason                      string
	Tokens                             []TokenView
	AsOfSeq                            uint64
}

// TokenView is one generation of a family; the token itself is never kept.
type TokenView struct {
	Generation uint64
	Status     string // active, rotated or revoked
	IssuedAt   time.Time
	RotatedAt  *time.Time // nil unless rotated
}

// Family returns a family's view, or an ENotFound error.
func (r *Reader) Family(ctx context.Context, familyID string) (FamilyView, error) {
	asOf := r.p.Applied()
	row, err := r.db.R.GetFamily(ctx, familyID)
	if errors.Is(err, sql.ErrNoRows) {
		return FamilyView{}, domain.Errorf(domain.ENotFound, "no family %q", familyID)
	}
	if err != nil {
		return FamilyView{}, err
	}
	toks, err := r.db.R.FamilyTokens(ctx, familyID)
	if err != nil {
		return FamilyView{}, err
	}
	f := familyOf(row)
	v := FamilyView{FamilyID: f.ID, Subject: f.Subject, ClientID: f.ClientID, Scope: domain.ScopeString(f.Scope),
		Audience: f.Audience, Status: f.StatusAt(r.now()), Generation: f.Generation, CreatedAt: f.CreatedAt,
		LastUsedAt: f.LastUsedAt, ExpiresAt: f.ExpiresAt(), RevokedReason: f.RevokedReason, AsOfSeq: asOf,
		Tokens: make([]TokenView, len(toks))}
	if f.Status == domain.StatusRevoked {
		v.RevokedAt = &f.RevokedAt
	}
	for i, t := range toks {
		tv := TokenView{Generation: uint64(t.Generation), Status: "active", IssuedAt: unixNano(t.IssuedAt)}
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

// AuditEvent is a stored event as the audit trail shows it.
type AuditEvent struct {
	Seq                         uint64
	ID, Type                    string
	Time                        time.Time
	FamilyID, Subject, ClientID string
	Generation                  uint64
	Reason                      string
	Context                     json.RawMessage // a JSON object, {} when none
}

// AuditPage is one page of events in ascending seq. NextAfterSeq is the
// last event's seq (0 if none), where the next page starts.
type AuditPage struct {
	Events                []AuditEvent
	NextAfterSeq, AsOfSeq uint64
}

// Audit returns the events matching f after f.AfterSeq, at most f.Limit.
// Each filter combination reads one index in seq order (see query.sql), so
// a page reads about as many rows as it returns and never sorts.
func (r *Reader) Audit(ctx context.Context, f AuditFilter) (AuditPage, error) {
	asOf := r.p.Applied()
	rows, err := r.auditRows(ctx, f)
	if err != nil {
		return AuditPage{}, err
	}
	page := AuditPage{Events: make([]AuditEvent, len(rows)), AsOfSeq: asOf}
	for i, e := range rows {
		page.Events[i] = AuditEvent{Seq: uint64(e.Seq), ID: e.ID, Type: e.Type, Time: unixNano(e.Time),
			FamilyID: e.FamilyID, Subject: e.Subject, ClientID: e.ClientID, Generation: uint64(e.Generation),
			Reason: e.Reason, Context: json.RawMessage(e.Context)}
		page.NextAfterSeq = uint64(e.Seq)
	}
	return page, nil
}

func (r *Reader) auditRows(ctx context.Context, f AuditFilter) ([]queries.AuditEvent, error) {
	since, until := int64(math.MinInt64), int64(math.MaxInt64)
	after, upto := int64(f.AfterSeq), int64(math.MaxInt64)
	if !f.Since.IsZero() {
		since = f.Since.UnixNano()
		first, err := r.db.R.FirstSeqSince(ctx, since)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		after = max(after, first-1)
	}
	if !f.Until.IsZero() {
		until = f.Until.UnixNano()
		last, err := r.db.R.LastSeqBefore(ctx, until)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		upto = last
	}
	if after >= upto {
		return nil, nil
	}
	types := slices.Clone(f.Types)
	slices.Sort(types)
	types = slices.Compact(types)
	typesJSON := ""
	if len(types) > 0 {
		b, _ := json.Marshal(types)
		typesJSON = string(b)
	}
	limit := int64(f.Limit)
	switch {
	case f.FamilyID != "":
		return r.db.R.AuditByFamily(ctx, queries.AuditByFamilyParams{FamilyID: f.FamilyID, AfterSeq: after, UptoSeq: upto,
			Subject: f.Subject, ClientID: f.ClientID, Types: typesJSON, Since: since, Until: until, Lim: limit})
	case f.Subject != "":
		return r.db.R.AuditBySubject(ctx, queries.AuditBySubjectParams{Subject: f.Subject, AfterSeq: after, UptoSeq: upto,
			ClientID: f.ClientID, Types: typesJSON, Since: since, Until: until, Lim: limit})
	case f.ClientID != "":
		return r.db.R.AuditByClient(ctx, queries.AuditByClientParams{ClientID: f.ClientID, AfterSeq: after, UptoSeq: upto,
			Types: typesJSON, Since: since, Until: until, Lim: limit})
	case len(types) == 1:
		return r.db.R.AuditByType(ctx, queries.AuditByTypeParams{Type: types[0], AfterSeq: after, UptoSeq: upto,
			Since: since, Until: until, Lim: limit})
	case len(types) > 1 && !slices.ContainsFunc(types, func(t string) bool { return !rareTypes[t] }):
		return r.db.R.AuditByRareTypes(ctx, queries.AuditByRareTypesParams{Types: typesJSON, AfterSeq: after, UptoSeq: upto,
			Since: since, Until: until, Lim: limit})
	default:
		// Common types make up much of the stream, so the table in seq
		// order finds a page of them about as fast as an index would.
		return r.db.R.AuditBySeq(ctx, queries.AuditBySeqParams{AfterSeq: after, UptoSeq: upto, Types: typesJSON,
			Since: since, Until: until, Lim: limit})
	}
}

// rareTypes are the types the partial index audit_rare holds (migration
// 0003): few among many rotations.
var rareTypes = map[string]bool{
	string(domain.ReplayDetected): true, string(domain.FamilyRevoked): true, string(domain.RefreshRejected): true,
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
