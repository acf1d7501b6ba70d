// Handshake: the fixed-size hello both ends exchange before any frame, and the acceptor's status byte.
//
//   hello (54 bytes) := "CNPY" · u16 LE version (=1) · u64 LE server id · u64 LE incarnation · 32-byte MAC
//   MAC              := HMACSHA256(key = UTF-8 cluster secret, data = "canopy transport v1: cluster secret")
//
//   dialer   → acceptor : hello
//   acceptor → dialer   : status byte; if Accepted, followed by the acceptor's hello
//
// The incarnation is random per process start: it tells a restarted peer from a duplicate connection of a live one.
// Guarantees: parsing never throws on any 54 bytes; the MAC is compared in constant time; the acceptor never reveals
// its MAC before the dialer has proved it knows the secret. Limits: the MAC is a fixed token (no nonce), so it guards
// against misconfigured or foreign clients, not against an attacker who can observe the traffic — there is no
// encryption either.
using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Canopy.Transport;

/// <summary>The acceptor's answer to a hello.</summary>
internal enum HandshakeStatus : byte
{
    Accepted = 1,

    /// <summary>A connection between the two servers exists or wins the simultaneous-dial tie-break.</summary>
    Duplicate = 2,
    UnsupportedVersion = 3,
    WrongSecret = 4,
    BadServerId = 5,
    ShuttingDown = 6,
}

internal enum HelloCheck
{
    Ok,
    BadMagic,
    UnsupportedVersion,
    WrongSecret,
}

internal static class Handshake
{
    public const ushort ProtocolVersion = 1;
    public const int HelloBytes = 4 + 2 + 8 + 8 + MacBytes;
    public const int MacBytes = 32;

    public static ReadOnlySpan<byte> Magic => "CNPY"u8;

    private static ReadOnlySpan<byte> MacLabel => "canopy transport v1: cluster secret"u8;

    public static byte[] ComputeMac(string clusterSecret) => HMACSHA256.HashData(Encoding.UTF8.GetBytes(clusterSecret), MacLabel);

    public static void WriteHello(Span<byte> dst, ulong serverId, ulong incarnation, ReadOnlySpan<byte> mac)
    {
        Magic.CopyTo(dst);
        BinaryPrimitives.WriteUInt16LittleEndian(dst[4..], ProtocolVersion);
        BinaryPrimitives.WriteUInt64LittleEndian(dst[6..], serverId);
        BinaryPrimitives.WriteUInt64LittleEndian(dst[14..], incarnation);
        mac.CopyTo(dst[22..(22 + MacBytes)]);
    }

    public static HelloCheck Check(ReadOnlySpan<byte> hello, ReadOnlySpan<byte> expectedMac, out ulong serverId, out ulong incarnation, out ushort version)
    {
        serverId = 0;
        incarnation = 0;
        version = 0;
        if (hello.Length != HelloBytes || !hello[..4].SequenceEqual(Magic))
        {
            return HelloCheck.BadMagic;
        }

        version = BinaryPrimitives.ReadUInt16LittleEndian(hello[4..]);
        if (version != ProtocolVersion)
        {
            return HelloCheck.UnsupportedVersion;
        }

        if (!CryptographicOperations.FixedTimeEquals(hello[22..], expectedMac))
        {
            return HelloCheck.WrongSecret;
        }

        serverId = BinaryPrimitives.ReadUInt64LittleEndian(hello[6..]);
        incarnation = BinaryPrimitives.ReadUInt64LittleEndian(hello[14..]);
        return HelloCheck.Ok;
    }
}
