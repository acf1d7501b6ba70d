using Canopy.Clock;
using Canopy.Rpc;

namespace Canopy.Txn;

/// <summary>Conversions between the transaction types and their RPC form.</summary>
public static class TxnWire
{
    public static TxnMetaDto ToDto(this TxnMeta t) => new()
    {
        Id = t.Id.ToString(),
        Epoch = t.Epoch,
        ReadTs = t.ReadTimestamp.ToString(),
        WriteTs = t.WriteTimestamp.ToString(),
        MinTs = t.MinTimestamp.ToString(),
        Priority = t.Priority,
        Anchor = t.Anchor,
    };

    /// <summary>Parses a transaction from the wire; null with <paramref name="error"/> when malformed.</summary>
    public static TxnMeta? FromDto(TxnMetaDto? d, out string? error)
    {
        error = null;
        if (d is null)
        {
            error = "a transaction is required";
            return null;
        }

        if (!Guid.TryParse(d.Id, out var id) || !HlcTimestamp.TryParse(d.ReadTs, out var r) || !HlcTimestamp.TryParse(d.WriteTs, out var w)
            || !HlcTimestamp.TryParse(d.MinTs, out var m) || d.Epoch < 0 || d.Anchor is null || w < r)
        {
            error = "malformed transaction (id, epoch, timestamps or anchor)";
            return null;
        }

        return new TxnMeta(id, d.Epoch, r, w, m, d.Priority, d.Anchor);
    }

    public static string Name(this TxnStatus s) => s switch
    {
        TxnStatus.Pending => "pending",
        TxnStatus.Staging => "staging",
        TxnStatus.Committed => "committed",
        _ => "aborted",
    };
}
