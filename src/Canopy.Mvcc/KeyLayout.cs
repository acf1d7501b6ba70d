namespace Canopy.Mvcc;

/// <summary>
/// The whole engine key space of one server, by first byte (DESIGN §4). System keys sort before user data, and
/// range-local keys before both, so each class is one contiguous span:
/// <code>
///   0x01  range-local: Raft state (RaftStorage: 0x01 'g' / 'd' / 'x'), per-range state (RangeKeys: 0x01 'r')
///   0x02  cluster-wide system keys (SystemKeys): liveness, range addressing
///   0x10  MVCC user data (MvccKeys): intents and versions
/// </code>
/// Guarantee: constants only; the prefixes are distinct and ordered as listed.
/// </summary>
public static class KeyLayout
{
    /// <summary>Range-local keys.</summary>
    public const byte RangeLocal = RangeKeys.LocalPrefix;

    /// <summary>Cluster-wide system keys.</summary>
    public const byte System = SystemKeys.Prefix;

    /// <summary>MVCC user data.</summary>
    public const byte UserData = MvccKeys.Prefix;
}
