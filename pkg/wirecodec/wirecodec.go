// Package wirecodec is a gRPC codec for servers and proxies that forward
// messages already in protobuf wire form. A Frame is written as its parts,
// without decoding, re-encoding or copying them (so one encoded part can be
// shared by many streams), and read without decoding; every other message
// goes through gRPC's own protobuf codec, unchanged.
package wirecodec

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec this one delegates to
	"google.golang.org/grpc/mem"
)

// Frame is one message in protobuf wire form, possibly in several parts
// (protobuf allows a message's fields to be concatenated). Parts that are
// sent must not be changed afterwards: gRPC may still be writing them.
type Frame struct {
	Parts [][]byte
}

// Bytes returns the message as one slice.
func (f *Frame) Bytes() []byte {
	if len(f.Parts) == 1 {
		return f.Parts[0]
	}
	var out []byte
	for _, p := range f.Parts {
		out = append(out, p...)
	}
	return out
}

// Codec sends Frames as they are and everything else as protobuf.
type Codec struct{ proto encoding.CodecV2 }

var _ encoding.CodecV2 = Codec{}

// New returns the codec; use it with grpc.ForceServerCodecV2 or
// grpc.ForceCodecV2.
func New() Codec {
	c := encoding.GetCodecV2("proto")
	if c == nil {
		panic("wirecodec: gRPC's proto codec is not registered")
	}
	return Codec{proto: c}
}

// Marshal implements encoding.CodecV2.
func (c Codec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*Frame)
	if !ok {
		return c.proto.Marshal(v)
	}
	out := make(mem.BufferSlice, 0, len(f.Parts))
	for _, p := range f.Parts {
		if len(p) > 0 {
			out = append(out, mem.SliceBuffer(p))
		}
	}
	return out, nil
}

// Unmarshal implements encoding.CodecV2.
func (c Codec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*Frame)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	if f == nil {
		return fmt.Errorf("wirecodec: unmarshal into a nil frame")
	}
	f.Parts = [][]byte{data.Materialize()}
	return nil
}

// Name is "proto": on the wire these are ordinary protobuf messages.
func (Codec) Name() string { return "proto" }
