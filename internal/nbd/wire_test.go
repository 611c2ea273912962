package nbd

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("hex %q: %v", s, err)
	}
	return b
}

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Request
		wantErr error
	}{
		{
			name: "read",
			in:   "25609513" + "00000000" + "0102030405060708" + "0000000000001000" + "00000200",
			want: Request{Type: CmdRead, Handle: 0x0102030405060708, Offset: 4096, Length: 512},
		},
		{
			name: "write FUA",
			in:   "25609513" + "00010001" + "00000000000000ff" + "0000000100000000" + "00020000",
			want: Request{Flags: CmdFlagFUA, Type: CmdWrite, Handle: 0xff, Offset: 1 << 32, Length: 128 << 10},
		},
		{
			name: "write zeroes no hole",
			in:   "25609513" + "00020006" + "0000000000000001" + "0000000000000000" + "ffffffff",
			want: Request{Flags: CmdFlagNoHole, Type: CmdWriteZeroes, Handle: 1, Length: 0xffffffff},
		},
		{
			name: "trailing bytes ignored",
			in:   "25609513" + "00000002" + "0000000000000000" + "0000000000000000" + "00000000" + "deadbeef",
			want: Request{Type: CmdDisc},
		},
		{
			name:    "bad magic",
			in:      "67446698" + "00000000" + "0000000000000000" + "0000000000000000" + "00000000",
			wantErr: ErrBadMagic,
		},
		{
			name:    "short",
			in:      "25609513" + "00000000",
			wantErr: errors.New("short"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeRequest(mustHex(t, tt.in))
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("DecodeRequest: want error, got %v", got)
				}
				if errors.Is(tt.wantErr, ErrBadMagic) && !errors.Is(err, ErrBadMagic) {
					t.Fatalf("DecodeRequest error: want %v, got %v", ErrBadMagic, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeRequest: %v", err)
			}
			if got != tt.want {
				t.Fatalf("DecodeRequest: want %+v, got %+v", tt.want, got)
			}
			var b [RequestSize]byte
			got.Encode(b[:])
			if in := mustHex(t, tt.in)[:RequestSize]; !bytes.Equal(b[:], in) {
				t.Fatalf("Encode: want %x, got %x", in, b)
			}
		})
	}
}

func TestReplyCodec(t *testing.T) {
	tests := []struct {
		name   string
		handle uint64
		errno  uint32
		want   string
	}{
		{"ok", 0x0102030405060708, 0, "67446698" + "00000000" + "0102030405060708"},
		{"EIO", 7, EIO, "67446698" + "00000005" + "0000000000000007"},
		{"ESHUTDOWN", ^uint64(0), ESHUTDOWN, "67446698" + "0000006c" + "ffffffffffffffff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b [ReplySize]byte
			EncodeReply(b[:], tt.handle, tt.errno)
			if want := mustHex(t, tt.want); !bytes.Equal(b[:], want) {
				t.Fatalf("EncodeReply: want %x, got %x", want, b)
			}
			r, err := DecodeReply(b[:])
			if err != nil {
				t.Fatalf("DecodeReply: %v", err)
			}
			if want := (Reply{Error: tt.errno, Handle: tt.handle}); r != want {
				t.Fatalf("DecodeReply: want %+v, got %+v", want, r)
			}
			var b2 [ReplySize]byte
			r.Encode(b2[:])
			if b2 != b {
				t.Fatalf("Reply.Encode: want %x, got %x", b, b2)
			}
		})
	}
	if _, err := DecodeReply(mustHex(t, "25609513"+"00000000"+"0000000000000000")); !errors.Is(err, ErrBadMagic) {
		t.Fatalf("DecodeReply with request magic: want %v, got %v", ErrBadMagic, err)
	}
	if _, err := DecodeReply(make([]byte, ReplySize-1)); err == nil {
		t.Fatalf("DecodeReply of %d bytes: want error, got nil", ReplySize-1)
	}
}

func TestRequestString(t *testing.T) {
	tests := []struct {
		r    Request
		want string
	}{
		{Request{Type: CmdRead, Handle: 0x2a, Offset: 4096, Length: 512}, "READ handle=0x2a off=4096 len=512"},
		{Request{Type: CmdWrite, Flags: CmdFlagFUA, Handle: 1}, "WRITE+FUA handle=0x1 off=0 len=0"},
		{Request{Type: CmdWriteZeroes, Flags: CmdFlagNoHole | 1<<5}, "WRITE_ZEROES+NO_HOLE+0x20 handle=0x0 off=0 len=0"},
		{Request{Type: 77}, "CMD(77) handle=0x0 off=0 len=0"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Fatalf("String: want %q, got %q", tt.want, got)
		}
	}
}

func TestErrnoFor(t *testing.T) {
	tests := []struct {
		err  error
		want uint32
	}{
		{nil, 0},
		{syscall.EPERM, EPERM},
		{syscall.EROFS, EPERM},
		{syscall.EIO, EIO},
		{syscall.ENOMEM, ENOMEM},
		{syscall.EINVAL, EINVAL},
		{syscall.ENOSPC, ENOSPC},
		{syscall.EDQUOT, ENOSPC},
		{syscall.EOVERFLOW, EOVERFLOW},
		{syscall.EOPNOTSUPP, ENOTSUP},
		{syscall.ESHUTDOWN, ESHUTDOWN},
		{syscall.ETIMEDOUT, EIO},
		{&os.PathError{Op: "pread", Path: "/dev/x", Err: syscall.ENOSPC}, ENOSPC},
		{fmt.Errorf("backend: %w", syscall.EINVAL), EINVAL},
		{io.ErrUnexpectedEOF, EIO},
		{errors.New("anything"), EIO},
	}
	for _, tt := range tests {
		if got := ErrnoFor(tt.err); got != tt.want {
			t.Fatalf("ErrnoFor(%v): want %d, got %d", tt.err, tt.want, got)
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	var b [RequestSize]byte
	Request{Type: CmdWrite, Flags: CmdFlagFUA, Handle: 9, Offset: 4096, Length: 4096}.Encode(b[:])
	f.Add(b[:])
	f.Add(b[:RequestSize-1])
	f.Add([]byte{})
	f.Add(mustHex(f, "67446698"+"00000000"+"0000000000000000"+"0000000000000000"+"00000000"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := DecodeRequest(in)
		if err != nil {
			return
		}
		var out [RequestSize]byte
		r.Encode(out[:])
		if !bytes.Equal(out[:], in[:RequestSize]) {
			t.Fatalf("round trip: want %x, got %x", in[:RequestSize], out)
		}
		r2, err := DecodeRequest(out[:])
		if err != nil || r2 != r {
			t.Fatalf("re-decode: want %+v, got %+v, %v", r, r2, err)
		}
		_ = r.String()
	})
}

func FuzzDecodeReply(f *testing.F) {
	var b [ReplySize]byte
	EncodeReply(b[:], 0x1234, EIO)
	f.Add(b[:])
	f.Add(b[:ReplySize-1])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := DecodeReply(in)
		if err != nil {
			return
		}
		var out [ReplySize]byte
		r.Encode(out[:])
		if !bytes.Equal(out[:], in[:ReplySize]) {
			t.Fatalf("round trip: want %x, got %x", in[:ReplySize], out)
		}
	})
}
