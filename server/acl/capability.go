package acl

import (
	"fmt"
	"strings"
)

// Capability is a set of the operations a policy rule grants on a path. The
// bits combine: Read|List is "read and list".
type Capability uint16

// The capabilities, in Vault's canonical order.
const (
	// Create permits writing data where none exists (POST/PUT).
	Create Capability = 1 << iota
	// Read permits reading (GET).
	Read
	// Update permits changing existing data (POST/PUT).
	Update
	// Patch permits a partial update (PATCH).
	Patch
	// Delete permits deleting (DELETE).
	Delete
	// List permits listing the keys under a path (LIST).
	List
	// Sudo permits using root-protected paths, in addition to the
	// capability the operation itself needs.
	Sudo
	// Deny grants nothing and overrides every other capability of the same
	// rule. A rule that holds Deny holds nothing else.
	Deny
)

// AllGranting is every capability that grants something: what the root
// policy holds.
const AllGranting = Create | Read | Update | Patch | Delete | List | Sudo

// capabilityNames is indexed by bit position.
var capabilityNames = [...]string{"create", "read", "update", "patch", "delete", "list", "sudo", "deny"}

// capabilityHint lists the valid names for error messages.
const capabilityHint = "use create, read, update, patch, delete, list, sudo or deny"

// vaultOnlyCapabilities are capabilities Vault knows and coffer does not
// implement.
var vaultOnlyCapabilities = map[string]bool{"subscribe": true, "recover": true}

// Names returns the names of the capabilities in c, in Vault's canonical
// order (create, read, update, patch, delete, list, sudo, deny). It returns
// an empty slice for 0.
func (c Capability) Names() []string {
	names := make([]string, 0, len(capabilityNames))
	for i, name := range capabilityNames {
		if c&(1<<i) != 0 {
			names = append(names, name)
		}
	}
	return names
}

// String returns the names of the capabilities in c joined by ", ", or
// "none" for 0.
func (c Capability) String() string {
	if c == 0 {
		return "none"
	}
	return strings.Join(c.Names(), ", ")
}

// ParseCapability returns the capability named s (one of Vault's lower-case
// names). An unknown name gets an error that lists the valid ones.
func ParseCapability(s string) (Capability, error) {
	for i, name := range capabilityNames {
		if s == name {
			return 1 << i, nil
		}
	}
	switch lower := strings.ToLower(s); {
	case vaultOnlyCapabilities[lower]:
		return 0, fmt.Errorf("capability %q is not supported by coffer: remove it", clip(s))
	case lower != s && lower != "":
		for _, name := range capabilityNames {
			if lower == name {
				return 0, fmt.Errorf("unknown capability %q: capabilities are lower case: use %q", clip(s), name)
			}
		}
	}
	return 0, fmt.Errorf("unknown capability %q: %s", clip(s), capabilityHint)
}

// clip shortens s for an error message, so that a message stays one
// readable line whatever the input.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
		cut--
	}
	return s[:cut] + "…"
}
