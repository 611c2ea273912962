// Package api holds the JSON types of the daemons' control sockets, shared by
// rbdi and rbdt (which answer with them) and rbdctl (which reads them), so
// that the CLI needs none of the daemons' machinery.
package api

import (
	"net/netip"
	"time"
)

// Device is an initiator's device.
type Device struct {
	Name       string    `json:"name"`
	Path       string    `json:"path"`
	NBD        string    `json:"nbd"`
	Target     string    `json:"target"`
	TargetAddr string    `json:"target_addr"`
	Export     string    `json:"export"`
	State      string    `json:"state"`
	Reason     string    `json:"reason,omitempty"`
	Size       uint64    `json:"size"`
	BlockSize  uint32    `json:"block_size"`
	ReadOnly   bool      `json:"read_only"`
	Queues     int       `json:"queues"`
	SlotSize   int       `json:"slot_size"`
	Inline     int       `json:"inline"`
	Since      time.Time `json:"since"`
	// NBDSocket is the NBD Unix socket the device is served on (rbdctl -n
	// --nbd-socket), SocketClients how many clients are connected to it.
	// Without a kernel device (--no-kernel-device) Path and NBD are empty.
	NBDSocket     string `json:"nbd_socket,omitempty"`
	SocketClients int    `json:"socket_clients,omitempty"`
	// Existing, in the answer to an add, says that this host had the export
	// (same target address, port and export) mapped already, as this
	// device: rbdi answers with it instead of mapping it twice.
	Existing bool `json:"existing,omitempty"`
}

// TargetStatus is a target's state: where it listens, its exports and its
// sessions.
type TargetStatus struct {
	Role     string           `json:"role"`
	Listen   []netip.AddrPort `json:"listen"`
	Exports  []Export         `json:"exports"`
	Sessions []Session        `json:"sessions"`
}

// Export is one of a target's exports.
type Export struct {
	Name     string `json:"name"`
	ReadOnly bool   `json:"read_only"`
	Shared   bool   `json:"shared"`
	// Auth is "required" or "optional" for an export with a key (KeyID
	// names the key without disclosing it), absent without one; Allow is
	// its allow list, absent when every address may open it.
	Auth  string   `json:"auth,omitempty"`
	KeyID string   `json:"key_id,omitempty"`
	Allow []string `json:"allow,omitempty"`
}

// Session is an initiator's session on a target.
type Session struct {
	ID       string    `json:"id"`
	Export   string    `json:"export"`
	Peer     string    `json:"peer"`
	ReadOnly bool      `json:"read_only"`
	Queues   int       `json:"queues"`
	Conns    int       `json:"connections"`
	Since    time.Time `json:"since"`
}
