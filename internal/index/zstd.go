package index

import (
	"bufio"
	"errors"
)

var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

func buildZstd(x *Index, r *bufio.Reader) error { return errors.New("TODO") }

func (x *Index) decodeZstd(p Plan, fetched []byte) ([][]byte, error) { return nil, errors.New("TODO") }

func (x *Index) decodeTOC(p Plan, fetched []byte) ([][]byte, error) { return nil, errors.New("TODO") }
