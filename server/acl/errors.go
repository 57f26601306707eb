package acl

import (
	"errors"
	"fmt"
	"strings"
)

// Errors of package acl. A *ParseError wraps one of them, so that callers
// can tell a bad policy (InvalidArgument) from one over a limit
// (ResourceExhausted) with errors.Is.
var (
	// ErrInvalidPolicy means a policy's name or text is not acceptable.
	ErrInvalidPolicy = errors.New("acl: invalid policy")
	// ErrPolicyTooLarge means a policy exceeds a limit: MaxPolicyBytes,
	// MaxRules or MaxPatternBytes.
	ErrPolicyTooLarge = errors.New("acl: policy too large")
)

// ParseError is why Parse refused a policy. Its message is one line:
//
//	policy NAME: line L, column C: WHAT: WHAT TO DO
//
// without the position when none is known.
type ParseError struct {
	// Policy is the policy's name as given to Parse.
	Policy string
	// Line and Column locate the problem in the policy's text, counting
	// from 1; both are 0 when the problem has no place in the text.
	Line, Column int
	// Msg says what is wrong and what to do.
	Msg string

	kind error // ErrInvalidPolicy or ErrPolicyTooLarge
}

// Error returns the one-line message.
func (e *ParseError) Error() string {
	var b strings.Builder
	b.WriteString("policy ")
	if validName(e.Policy) {
		b.WriteString(e.Policy)
	} else {
		fmt.Fprintf(&b, "%q", clip(e.Policy))
	}
	b.WriteString(": ")
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d, column %d: ", e.Line, e.Column)
	}
	b.WriteString(oneLine(e.Msg))
	return b.String()
}

// Unwrap returns ErrInvalidPolicy or ErrPolicyTooLarge.
func (e *ParseError) Unwrap() error { return e.kind }

// oneLine makes sure a message is a single line.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}
