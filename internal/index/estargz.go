package index

import "errors"

func (x *Index) decodeTOC(p Plan, fetched []byte) ([][]byte, error) { return nil, errors.New("TODO") }
