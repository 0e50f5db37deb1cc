package api

import (
	"context"
	"encoding/json"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/projections"
)

// The read model answers in its own types; these put its answers in the
// contract's shape.

func (s *Service) readFamily(ctx context.Context, familyID string) (wire.FamilyView, error) {
	f, err := s.Reader.Family(ctx, familyID)
	if err != nil {
		return wire.FamilyView{}, err
	}
	return familyView(f), nil
}

func familyView(f projections.FamilyView) wire.FamilyView {
	v := wire.FamilyView{FamilyID: f.FamilyID, Subject: f.Subject, ClientID: f.ClientID, Scope: f.Scope,
		Audience: f.Audience, Status: string(f.Status), Generation: f.Generation, CreatedAt: f.CreatedAt,
		LastUsedAt: f.LastUsedAt, ExpiresAt: f.ExpiresAt, RevokedAt: f.RevokedAt, RevokedReason: f.RevokedReason, ArchivedAt: f.ArchivedAt,
		Tokens: make([]wire.TokenView, len(f.Tokens)), AsOfSeq: f.AsOfSeq, Erased: f.Erased, DPoPJKT: f.DPoPJKT}
	for i, t := range f.Tokens {
		v.Tokens[i] = wire.TokenView{Generation: t.Generation, Status: t.Status, IssuedAt: t.IssuedAt, RotatedAt: t.RotatedAt}
	}
	return v
}

func (s *Service) readAudit(ctx context.Context, filter projections.AuditFilter) (wire.AuditPage, error) {
	// NATS drops a reply over its max payload (1 MiB by default and in the
	// contract); a quarter of it leaves room for the page's other fields.
	filter.MaxBytes, filter.Size = wire.MaxAuditPageBytes, auditEventBytes
	p, err := s.Reader.Audit(ctx, filter)
	if err != nil {
		return wire.AuditPage{}, err
	}
	page := wire.AuditPage{Events: make([]wire.AuditEvent, len(p.Events)), NextAfterSeq: p.NextAfterSeq, AsOfSeq: p.AsOfSeq}
	for i, e := range p.Events {
		page.Events[i] = auditEvent(e)
	}
	return page, nil
}

func auditEvent(e projections.AuditEvent) wire.AuditEvent {
	return wire.AuditEvent{Seq: e.Seq, ID: e.ID, Type: e.Type, Time: e.Time, FamilyID: e.FamilyID,
		Subject: e.Subject, ClientID: e.ClientID, PresentedBy: e.PresentedBy, Generation: e.Generation,
		PresentedGeneration: e.PresentedGeneration, DPoPJKT: e.DPoPJKT, PresentedJKT: e.PresentedJKT, Reason: e.Reason, Context: e.Context, Erased: e.Erased, ContextExpired: e.ContextExpired}
}

// auditEventBytes is an event's length in a reply: its JSON and a comma.
func auditEventBytes(e projections.AuditEvent) int {
	b, _ := json.Marshal(auditEvent(e))
	return len(b) + 1
}
