package main

import (
	"encoding/json"

	"github.com/tokend/tokend/events"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func eventsIssue(subject, client string) events.IssueRequest {
	return events.IssueRequest{Subject: subject, ClientID: client, Scope: []string{"openid"}}
}

func eventsRefresh(token, client string) events.RefreshRequest {
	return events.RefreshRequest{Token: token, ClientID: client}
}
