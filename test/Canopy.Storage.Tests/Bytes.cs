using System.Globalization;
using System.Text;

namespace Canopy.Storage.Tests;

/// <summary>Test helpers for byte keys: readable construction and printing, and an independent reference ordering.</summary>
internal static class Bytes
{
    public static byte[] B(params byte[] bytes) => bytes;

    public static byte[] S(string ascii) => Encoding.ASCII.GetBytes(ascii);

    public static string Hex(byte[]? bytes) => bytes is null ? "null" : bytes.Length == 0 ? "[]" : Convert.ToHexString(bytes);

    /// <summary>Lexicographic unsigned order written out by hand, independent of <see cref="ByteArrayComparer"/>.</summary>
    public static int NaiveCompare(byte[] x, byte[] y)
    {
        for (var i = 0; i < x.Length && i < y.Length; i++)
        {
            if (x[i] != y[i])
            {
                return x[i] < y[i] ? -1 : 1;
            }
        }

        return x.Length.CompareTo(y.Length);
    }

    public static IComparer<byte[]> NaiveComparer { get; } = Comparer<byte[]>.Create(NaiveCompare);

    public static string Describe(IEnumerable<KeyValuePair<byte[], byte[]>> entries) =>
        "{" + string.Join(", ", entries.Select(e => string.Create(CultureInfo.InvariantCulture, $"{Hex(e.Key)}={Hex(e.Value)}"))) + "}";

    public static void AssertSameEntries(IEnumerable<KeyValuePair<byte[], byte[]>> expected, IEnumerable<KeyValuePair<byte[], byte[]>> actual, string context)
    {
        var e = Describe(expected);
        var a = Describe(actual);
        if (e != a)
        {
            Assert.Fail($"{context}: expected {e} but got {a}");
        }
    }
}
