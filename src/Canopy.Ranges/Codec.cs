using System.Buffers.Binary;
using Canopy.Clock;

namespace Canopy.Ranges;

/// <summary>Little helpers for the range layer's binary encodings (lengths checked; FormatException on bad input).</summary>
internal sealed class ByteWriter
{
    private readonly MemoryStream _ms = new();
    private readonly byte[] _scratch = new byte[16];

    public ByteWriter U8(byte v)
    {
        _ms.WriteByte(v);
        return this;
    }

    public ByteWriter U64(ulong v)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(_scratch, v);
        _ms.Write(_scratch, 0, 8);
        return this;
    }

    public ByteWriter Ts(HlcTimestamp ts)
    {
        ts.EncodeTo(_scratch);
        _ms.Write(_scratch, 0, HlcTimestamp.EncodedLength);
        return this;
    }

    public ByteWriter Bytes(ReadOnlySpan<byte> b)
    {
        BinaryPrimitives.WriteInt32LittleEndian(_scratch, b.Length);
        _ms.Write(_scratch, 0, 4);
        _ms.Write(b);
        return this;
    }

    public ByteWriter OptBytes(byte[]? b)
    {
        U8(b is null ? (byte)0 : (byte)1);
        if (b is not null)
        {
            Bytes(b);
        }

        return this;
    }

    public byte[] ToArray() => _ms.ToArray();
}

internal ref struct ByteReader(ReadOnlySpan<byte> data)
{
    private readonly ReadOnlySpan<byte> _data = data;
    private int _pos;

    public readonly bool AtEnd => _pos == _data.Length;

    public byte U8()
    {
        Need(1);
        return _data[_pos++];
    }

    public ulong U64()
    {
        Need(8);
        var v = BinaryPrimitives.ReadUInt64LittleEndian(_data[_pos..]);
        _pos += 8;
        return v;
    }

    public HlcTimestamp Ts()
    {
        Need(HlcTimestamp.EncodedLength);
        var v = HlcTimestamp.Decode(_data.Slice(_pos, HlcTimestamp.EncodedLength));
        _pos += HlcTimestamp.EncodedLength;
        return v;
    }

    public byte[] Bytes()
    {
        Need(4);
        var n = BinaryPrimitives.ReadInt32LittleEndian(_data[_pos..]);
        _pos += 4;
        if (n < 0)
        {
            throw new FormatException("range codec: negative length");
        }

        Need(n);
        var b = _data.Slice(_pos, n).ToArray();
        _pos += n;
        return b;
    }

    public byte[]? OptBytes() => U8() == 0 ? null : Bytes();

    private readonly void Need(int n)
    {
        // Not `_pos + n > _data.Length`: a length near int.MaxValue would overflow that sum and pass the check.
        if (n < 0 || n > _data.Length - _pos)
        {
            throw new FormatException("range codec: truncated");
        }
    }
}
