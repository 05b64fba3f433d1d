/// Which pages of a memory slot the guest wrote since the log was last read:
/// bit n is page n of the slot, as KVM_GET_DIRTY_LOG reports it (64-bit words,
/// least significant bit first).
public struct DirtyBitmap: Equatable, Sendable {
    /// The bitmap's words, as the kernel filled them.
    public private(set) var words: [UInt64]
    /// The number of pages the bitmap covers.
    public let pageCount: Int

    /// An empty bitmap for `pageCount` pages.
    public init(pageCount: Int) {
        self.pageCount = pageCount
        words = Array(repeating: 0, count: DirtyBitmap.wordCount(pages: pageCount))
    }

    /// A bitmap over words the kernel filled.
    public init(words: [UInt64], pageCount: Int) {
        precondition(words.count == DirtyBitmap.wordCount(pages: pageCount), "word count does not match the page count")
        self.words = words
        self.pageCount = pageCount
    }

    /// The number of 64-bit words KVM fills for `pages` pages.
    public static func wordCount(pages: Int) -> Int { (pages + 63) / 64 }

    /// Whether page `page` (counted from the slot's start) was written.
    public func isDirty(page: Int) -> Bool {
        guard page >= 0, page < pageCount else { return false }
        return words[page / 64] & (1 << UInt64(page % 64)) != 0
    }

    /// Marks page `page` dirty.
    public mutating func markDirty(page: Int) {
        precondition(page >= 0 && page < pageCount, "page \(page) is outside a \(pageCount)-page bitmap")
        words[page / 64] |= 1 << UInt64(page % 64)
    }

    /// The written pages, in increasing order.
    public var dirtyPages: [Int] {
        var pages: [Int] = []
        for (index, word) in words.enumerated() where word != 0 {
            var remaining = word
            while remaining != 0 {
                pages.append(index * 64 + remaining.trailingZeroBitCount)
                remaining &= remaining - 1
            }
        }
        return pages
    }

    /// How many pages were written.
    public var dirtyCount: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }
}
