import Glibc

// The decoded-instruction cache (DESIGN.md, "decode once"): blocks of
// decoded instructions, found by the guest-physical address and RIP of their
// first byte, so that the step loop decodes an instruction once and then
// finds it with a few compares.
//
// A block is a trace through one 4 KiB page: it goes on past a conditional
// branch (its fall-through path), into the target of a direct JMP or CALL
// and from a RET back to its CALL while they stay in the page, and ends at
// any other branch, after an instruction that may change how code is
// fetched or decoded (a "barrier": CS, CR0/CR3/CR4, EFER, INVLPG, an
// interrupt shadow, I/O, or any opcode not listed in `blockFlow`, so that an
// instruction added later is safe before it is listed), before an
// instruction that crosses the page, or when its bytes no longer fit the
// words kept to check them. The block loop leaves a block as soon as RIP
// goes elsewhere than the trace did (a branch taken, a RET to another
// caller, a REP that restarts).
//
// When the code changes. A block keeps a copy of its bytes, and it is
// checked against memory (a compare of a few aligned words) before it runs
// in a new *code epoch*; within an epoch it runs unchecked. The epoch moves on
// - when this CPU stores into a page it holds code of. Such pages are marked
//   in a per-CPU filter when a block is decoded or checked; the host TLB never
//   holds a writable entry for a marked page, so every store to one takes the
//   slow path, `hostPointer(write: true)`, whatever instruction makes it
//   (MOV, string instructions, bulk stores, atomics, A/D bit updates). There
//   the store moves the epoch on and unmarks the page, so that the stores
//   that follow (code being written out, data sharing the page) go fast
//   again; the page's blocks are checked before they run again. A store into
//   the page of the block that is running also stops that block after the
//   current instruction (a trace's bytes lie here and there in its page):
//   the SDM (8.1.3) makes a store into the instruction stream take effect for
//   the next instruction fetched. That page stays marked meanwhile.
// - at every serializing event this CPU goes through: each `run` (each
//   KVM_RUN slice), each barrier instruction (CPUID, IRET, MOV to CR, WRMSR,
//   INVLPG... and any opcode not listed as plain, but STI, SWAPGS and
//   RDTSCP: `isSerializing`), each exception or interrupt. Writes this CPU
//   cannot see are caught there:
//   - other vCPUs' stores: the SDM's rule for cross-modifying code is that
//     the executing processor serializes after the modification and before
//     running the new code (Linux's text_poke does it with IPIs);
//   - user space writing guest memory behind the CPU (a VMM's DMA, loaders,
//     tests, memory-slot changes): KVM promises that the guest sees such
//     writes as it would a coherent device's or another CPU's. They are seen
//     by the next KVM_RUN, and during one within a slice (SoftKVM runs the
//     CPU 100 000 instructions at a time) or at the guest's next serializing
//     instruction or interrupt, which is what a guest waiting for DMA does.
// The per-page flag is this CPU's own: a flag shared by all vCPUs and
// checked by each store would not make other writers safe either (user space
// never checks it, and on x86 another vCPU's load of the flag can pass its
// own store unless every store is fenced), while the epoch rule follows the
// architecture's own rule for code written by another agent.
//
// Cached instructions are executed in place: a handler must not change the
// fields the decoder filled, only `offset` (recomputed before each run of
// the instruction) and its own locals.

/// What a cached handler did.
enum HandlerResult: UInt8 {
    /// It completed and execution goes on at `nextRIP`; state.rip is not
    /// written (the block loop keeps RIP until the block stops).
    case next
    /// It completed and wrote state.rip (a branch, or `execute`'s handlers).
    case branched
    /// A fault or exit is in `pending`; RIP is the instruction's, which the loop writes.
    case fault
    /// A fault or exit from `execute`'s handlers, which leave RIP as the exit needs it.
    case stop
}

/// Why `runCachedBlocks` returned.
enum CachedRunEnd {
    case limit
    /// An instruction the cache does not hold is next.
    case uncached
    /// A fault or exit is in `pending`, RIP at the instruction.
    case fault
    /// An MMIO write is in `pending`, after its instruction.
    case exit
}

/// What the block builder does after an instruction.
enum BlockFlow {
    /// Decoding goes on: the instruction goes to the next one, or is a
    /// conditional branch whose fall-through path the block follows.
    case next
    /// An unconditional near branch ends the block.
    case end
    /// The instruction may change how the following code is fetched or
    /// decoded (or is not listed): the block ends, and the fetch state is
    /// rebuilt after it runs.
    case barrier
}

/// One cached block: the tag, where its instructions are in the pool, and
/// how to check that its bytes are still in memory.
struct CachedBlock {
    /// The tag's physical address bits.
    static let physicalMask: UInt64 = 0x00FF_FFFF_FFFF_FFFF

    /// The guest-physical address of the first byte, with the code size
    /// (2, 4 or 8) in bits 56-63; 0 when the slot is empty.
    var tag: UInt64 = 0
    /// RIP at the first instruction: the same bytes at another RIP decode to
    /// other next-RIPs and RIP-relative addresses.
    var rip: UInt64 = 0
    var first: Int32 = 0
    var count: Int32 = 0
    /// The code epoch in which the bytes were last checked against memory.
    var checkedEpoch: UInt64 = 0
    /// The aligned 8-byte words of the page that hold the code, in the
    /// block's slot of `DecodedCacheStorage.words` (at most `wordsPerBlock`).
    var wordCount: Int32 = 0
    /// The highest RIP of its bytes, held against CS's limit outside 64-bit
    /// mode (`CodePage.codeLimit`) when the block is checked.
    var lastByte: UInt64 = 0
    /// The block that ran after this one last time: when it is checked in
    /// the current epoch and starts at RIP, the loop takes it without a lookup.
    var successor: UnsafeMutablePointer<CachedBlock>? = nil
    /// The successor before it: a block that ends at a conditional branch
    /// goes on to either of two.
    var alternate: UnsafeMutablePointer<CachedBlock>? = nil
}

/// An aligned word of a page holding code: its offset in the page, which
/// of its bytes are code, and what they were when decoded.
struct CodeWord {
    var offset: Int = 0
    var mask: UInt64 = 0
    var bytes: UInt64 = 0
}

/// The memory of the decoded-instruction cache and of the host TLB. A class
/// only so that it is freed with the last CPU that uses it; the step loop
/// reaches it through `DecodedCache`'s pointers.
final class DecodedCacheStorage {
    /// Direct-mapped block slots (a power of two).
    static let blockSlots = 32768
    static let wordsPerBlock = 8
    static let maxBlockInstructions = 32
    /// Instructions of all blocks; when full, the whole cache is dropped.
    let poolCapacity: Int

    let blocks: UnsafeMutablePointer<CachedBlock>
    let words: UnsafeMutablePointer<CodeWord>
    let pool: UnsafeMutablePointer<Instruction>
    let hostTLB: UnsafeMutablePointer<HostTLBEntry>
    /// The code-page filter: one bit per hash of a guest-physical page.
    let codePages: UnsafeMutablePointer<UInt64>
    /// 2^20 bits: no two pages of the first 4 GiB share one.
    static let codePageWords = 16384
    /// The blocks last found for RIPs in this code epoch, direct-mapped by RIP.
    let jumps: UnsafeMutablePointer<JumpEntry>
    static let jumpSlots = 4096

    init(poolCapacity: Int = 262_144) {
        self.poolCapacity = poolCapacity
        // Zeroed memory is the empty state of blocks, words, jump entries and
        // the filter, and the kernel gives it page by page as it is touched:
        // a CPU that runs little code costs little.
        blocks = Self.zeroed(Self.blockSlots)
        words = Self.zeroed(Self.blockSlots * Self.wordsPerBlock)
        pool = Self.zeroed(poolCapacity)
        codePages = Self.zeroed(Self.codePageWords)
        jumps = Self.zeroed(Self.jumpSlots)
        hostTLB = .allocate(capacity: HostTLBEntry.count)
        hostTLB.initialize(repeating: HostTLBEntry(), count: HostTLBEntry.count)
    }

    static func zeroed<T>(_ count: Int) -> UnsafeMutablePointer<T> {
        guard let memory = calloc(count, MemoryLayout<T>.stride) else { fatalError("out of memory for the decoded-instruction cache") }
        return memory.bindMemory(to: T.self, capacity: count)
    }

    deinit {
        free(blocks)
        free(words)
        free(pool)
        free(codePages)
        free(jumps)
        hostTLB.deallocate()
    }
}

/// The cache as the step loop sees it: pointers into the storage.
struct DecodedCache {
    var blocks: UnsafeMutablePointer<CachedBlock>
    var words: UnsafeMutablePointer<CodeWord>
    var pool: UnsafeMutablePointer<Instruction>
    var poolUsed = 0
    var poolCapacity: Int
    var hostTLB: UnsafeMutablePointer<HostTLBEntry>
    var codePages: UnsafeMutablePointer<UInt64>
    var jumps: UnsafeMutablePointer<JumpEntry>

    init(_ storage: DecodedCacheStorage) {
        blocks = storage.blocks
        words = storage.words
        pool = storage.pool
        poolCapacity = storage.poolCapacity
        hostTLB = storage.hostTLB
        codePages = storage.codePages
        jumps = storage.jumps
    }
}

/// A RIP and its block, found in `epoch`. Within a code epoch CS, the mode
/// and the code's translation stay as they were and the blocks checked in it
/// stay valid, so a RIP leads to the same block: the jump table skips the
/// translation and the hash of the full lookup.
struct JumpEntry {
    var rip: UInt64 = 0
    /// 0 when empty: code epochs start at 1.
    var epoch: UInt64 = 0
    var block: UnsafeMutablePointer<CachedBlock>? = nil
}

/// The code page RIP is in, translated once for all the fetches from it:
/// valid until a barrier instruction, an exception or the end of `run`, all
/// of which may change CS, paging or the TLB (see `invalidateContext`).
struct CodePage {
    /// The linear page number; ~0 when nothing is cached.
    var tag: UInt64 = ~0
    var physical: UInt64 = 0
    var host: UnsafeMutableRawPointer? = nil
    /// CS.base (0 in 64-bit mode) and the linear address width, of the mode
    /// the page was translated in.
    var segmentBase: UInt64 = 0
    var linearMask: UInt64 = ~0
    var codeSize = 4
    /// The stack's address size (`stackAddressSize`), which only a barrier changes.
    var stackSize = 4
    /// The last RIP CS's limit lets the CPU fetch from (~0 in 64-bit mode).
    var codeLimit: UInt64 = ~0
}

extension X86CPU {
    /// Gives this CPU a cache of its own (a copied X86CPU shares the storage
    /// until one of them runs) and forgets the fetch state, which the owner
    /// may have changed since the last run.
    mutating func prepareDecodedCache() {
        invalidateContext()
        if !isKnownUniquelyReferenced(&decodedStorage) {
            decodedStorage = DecodedCacheStorage()
            decoded = DecodedCache(decodedStorage)
            hostTLBGeneration = ~0
        }
    }

    /// Before anything that may change CS, the CPL, paging or the mode (a
    /// barrier instruction, an uncached one, exception delivery, the owner
    /// between runs): the code page is translated anew before the next
    /// block, and the host TLB takes no hit until then, so that an access
    /// made after such a change inside the same instruction walks. These are
    /// the serializing events, where a new code epoch begins.
    @inline(__always)
    mutating func invalidateContext() {
        codePage.tag = ~0
        accessKey = HostTLBEntry.invalidKey
        codeEpoch &+= 1
    }

    /// Whether a barrier instruction is a serializing event, before which
    /// the context is invalidated. STI (a barrier for its interrupt shadow),
    /// SWAPGS and RDTSCP (barriers as unlisted system instructions) change
    /// neither CS, the CPL, EFLAGS.AC, the mode nor paging, and the SDM does
    /// not make them serializing: in the Linux boot they came with every
    /// interrupt and system call, and each new epoch has every block checked
    /// again.
    static func isSerializing(_ insn: Instruction) -> Bool {
        switch insn.opcode {
        case 0xFB: return false
        case 0x101: return !(insn.mod == 3 && insn.reg & 7 == 7 && insn.rm & 7 < 2)
        default: return true
        }
    }

    /// The cached block for the instruction at RIP, decoding it on a miss;
    /// nil when the instruction must go the uncached way (its fetch faults
    /// or leaves RAM, or it crosses a page).
    @inline(always)
    mutating func lookupBlock() -> UnsafeMutablePointer<CachedBlock>? {
        let rip = state.rip
        let jump = decoded.jumps + Int(truncatingIfNeeded: (rip ^ (rip >> 12)) & UInt64(DecodedCacheStorage.jumpSlots - 1))
        // A block rebuilt for another RIP in the same slot, or not checked in
        // this epoch, fails the second test.
        if jump.pointee.rip == rip && jump.pointee.epoch == codeEpoch, let block = jump.pointee.block,
           block.pointee.rip == rip && block.pointee.checkedEpoch == codeEpoch {
            return block
        }
        guard let block = lookupBlockSlow(rip) else { return nil }
        jump.pointee = JumpEntry(rip: rip, epoch: codeEpoch, block: block)
        return block
    }

    /// The lookup by translation and guest-physical address.
    mutating func lookupBlockSlow(_ rip: UInt64) -> UnsafeMutablePointer<CachedBlock>? {
        var linear = (codePage.segmentBase &+ rip) & codePage.linearMask
        if linear >> 12 != codePage.tag {
            guard let refilled = refillCodePage(rip) else { return nil }
            linear = refilled
        }
        let blocks = decoded.blocks
        guard let host = codePage.host else { return nil }
        let physical = codePage.physical | (linear & 0xFFF)
        let tag = physical | UInt64(codePage.codeSize) << 56
        let slot = Int(truncatingIfNeeded: (physical ^ (physical >> 13)) & UInt64(DecodedCacheStorage.blockSlots - 1))
        let block = blocks + slot
        // A block decoded under a larger CS limit is decoded again: the
        // uncached fetch raises the #GP of an instruction beyond the limit.
        if block.pointee.tag == tag && block.pointee.rip == rip && block.pointee.lastByte <= codePage.codeLimit {
            if block.pointee.checkedEpoch == codeEpoch { return block }
            if holdsBytes(block, slot, host: host, physical) {
                block.pointee.checkedEpoch = codeEpoch
                markCodePage(physical)
                return block
            }
        }
        guard buildBlock(block, slot, tag: tag, rip: rip, physical: physical, host: host) else { return nil }
        block.pointee.checkedEpoch = codeEpoch
        markCodePage(physical)
        return block
    }

    /// The code-page filter's bit of a guest-physical address.
    @inline(__always)
    static func codePageBit(_ physical: UInt64) -> (word: Int, mask: UInt64) {
        let page = physical >> 12
        let hash = Int(truncatingIfNeeded: (page ^ (page >> 20)) & 0xF_FFFF)
        return (hash >> 6, 1 << UInt64(hash & 63))
    }

    /// Marks the page of `physical` as holding code this CPU runs: its
    /// stores to it take the slow path from now on.
    mutating func markCodePage(_ physical: UInt64) {
        let codePages = decoded.codePages, hostTLB = decoded.hostTLB
        let (word, mask) = X86CPU.codePageBit(physical)
        if codePages[word] & mask != 0 { return }
        codePages[word] |= mask
        // No writable host-TLB entry may reach a marked page.
        for i in 0..<HostTLBEntry.count where hostTLB[i].writeTag != ~0 {
            let linear = (hostTLB[i].writeTag & HostTLBEntry.pageMask) << 12
            if X86CPU.codePageBit(linear &+ hostTLB[i].physicalDelta) == (word, mask) { hostTLB[i].writeTag = ~0 }
        }
    }

    /// Whether the page of `physical` may hold code of this CPU.
    @inline(__always)
    mutating func isCodePage(_ physical: UInt64) -> Bool {
        let (word, mask) = X86CPU.codePageBit(physical)
        return decoded.codePages[word] & mask != 0
    }

    /// Translates the code page of RIP for the current mode and CS; returns
    /// RIP's linear address, or nil (and the uncached path raises the fault).
    mutating func refillCodePage(_ rip: UInt64) -> UInt64? {
        codePage.tag = ~0
        refreshHostTLB()
        let size = codeSize
        if size == 8 {
            codePage.segmentBase = 0
            codePage.linearMask = ~0
        } else {
            codePage.segmentBase = state.cs.base
            codePage.linearMask = 0xFFFF_FFFF
        }
        codePage.codeSize = size
        codePage.stackSize = stackAddressSize
        codePage.codeLimit = size == 8 ? ~0 : UInt64(state.cs.limit)
        let linear = (codePage.segmentBase &+ rip) & codePage.linearMask
        guard let physical = translate(linear, .fetch),
              let host = hostPointer(physical & ~0xFFF, size: 0x1000, write: false) else { return nil }
        codePage.physical = physical & ~0xFFF
        codePage.host = host
        codePage.tag = linear >> 12
        return linear
    }

    /// Whether memory still holds the bytes the block was decoded from.
    @inline(__always)
    mutating func holdsBytes(_ block: UnsafeMutablePointer<CachedBlock>, _ slot: Int, host: UnsafeMutableRawPointer,
                             _ physical: UInt64) -> Bool {
        let words = decoded.words + slot &* DecodedCacheStorage.wordsPerBlock
        var difference: UInt64 = 0
        for k in 0..<Int(truncatingIfNeeded: block.pointee.wordCount) {
            let word = words[k]
            difference |= (host.loadUnaligned(fromByteOffset: word.offset, as: UInt64.self) & word.mask) ^ word.bytes
        }
        return difference == 0
    }

    /// Decodes a block at RIP into `slot`: a trace through one page, which
    /// goes on past conditional branches (their fall-through), into the
    /// targets of direct JMPs and CALLs and back from a RET to its CALL when
    /// they stay in the page; each instruction's `traceNext` says where the
    /// trace went on. False when not even the first instruction can be cached.
    mutating func buildBlock(_ block: UnsafeMutablePointer<CachedBlock>, _ slot: Int, tag: UInt64, rip: UInt64,
                             physical: UInt64, host: UnsafeMutableRawPointer) -> Bool {
        if decoded.poolUsed + DecodedCacheStorage.maxBlockInstructions > decoded.poolCapacity {
            flushDecodedCache()
        }
        let pool = decoded.pool + decoded.poolUsed
        let words = decoded.words + slot * DecodedCacheStorage.wordsPerBlock
        let size = codePage.codeSize
        let page = ((codePage.segmentBase &+ rip) & codePage.linearMask) >> 12
        var offset = Int(physical & 0xFFF)
        var nextRIP = rip
        var count = 0
        var wordCount = 0
        var lastByte: UInt64 = 0
        // Return addresses of the CALLs followed, for the RETs.
        var returns = InlineArray<4, UInt64>(repeating: 0)
        var returnCount = 0
        block.pointee.tag = 0
        while count < DecodedCacheStorage.maxBlockInstructions {
            var window = FetchWindow()
            let available = min(15, 0x1000 - offset)
            if offset <= 0x1000 - 16 {
                window.low = (host + offset).loadUnaligned(as: UInt64.self)
                window.high = (host + offset).loadUnaligned(fromByteOffset: 8, as: UInt64.self)
                window.available = 15
            } else {
                for k in 0..<available { window.append((host + offset + k).load(as: UInt8.self)) }
            }
            var insn = Instruction()
            if decode(&insn, window, rip: nextRIP, size: size) != nil { break }
            let end = nextRIP &+ UInt64(insn.length) &- 1
            guard end <= codePage.codeLimit else { break }
            // The words holding the instruction's bytes (at most three), merged
            // into the block's; when they do not fit, the block ends before it.
            let firstWord = offset & ~7, lastWord = (offset + insn.length - 1) & ~7
            var newWords = 0
            for aligned in stride(from: firstWord, through: lastWord, by: 8)
            where !(0..<wordCount).contains(where: { words[$0].offset == aligned }) {
                newWords += 1
            }
            guard wordCount + newWords <= DecodedCacheStorage.wordsPerBlock else { break }
            for aligned in stride(from: firstWord, through: lastWord, by: 8) {
                let from = max(offset, aligned) - aligned, to = min(offset + insn.length, aligned + 8) - aligned
                let mask: UInt64 = (to == 8 ? ~0 : (1 << UInt64(to * 8)) - 1) & ~0 << UInt64(from * 8)
                if let k = (0..<wordCount).first(where: { words[$0].offset == aligned }) {
                    words[k].mask |= mask
                } else {
                    words[wordCount] = CodeWord(offset: aligned, mask: mask, bytes: 0)
                    wordCount += 1
                }
            }
            let flow = X86CPU.blockFlow(insn)
            prepareHandler(&insn, barrier: flow == .barrier)
            // Where the trace goes on, if it does.
            var follow: UInt64? = nil
            switch flow {
            case .next:
                // A 16- or 32-bit RIP that wraps leaves the page's bytes behind.
                if insn.nextRIP == nextRIP &+ UInt64(insn.length) { follow = insn.nextRIP }
            case .end:
                switch insn.handler {
                case .jump:
                    follow = insn.displacement
                case .call, .call32, .call64:
                    follow = insn.displacement
                    if returnCount < 4 {
                        returns[returnCount] = insn.nextRIP
                        returnCount += 1
                    } else {
                        follow = nil
                    }
                case .ret, .ret32, .ret64:
                    if returnCount > 0 && insn.opcode == 0xC3 {
                        returnCount -= 1
                        follow = returns[returnCount]
                    }
                default:
                    break
                }
            case .barrier:
                break
            }
            if let target = follow, ((codePage.segmentBase &+ target) & codePage.linearMask) >> 12 != page { follow = nil }
            insn.traceNext = follow ?? insn.nextRIP
            (pool + count).initialize(to: insn)
            count += 1
            lastByte = max(lastByte, end)
            guard let target = follow else { break }
            offset = Int(truncatingIfNeeded: (codePage.segmentBase &+ target) & 0xFFF)
            nextRIP = target
        }
        guard count > 0 else { return false }
        for k in 0..<wordCount {
            words[k].bytes = host.loadUnaligned(fromByteOffset: words[k].offset, as: UInt64.self) & words[k].mask
        }
        block.pointee = CachedBlock(tag: tag, rip: rip, first: Int32(decoded.poolUsed), count: Int32(count),
                                    wordCount: Int32(wordCount), lastByte: lastByte)
        decoded.poolUsed += count
        return true
    }

    /// Drops every block. A new code epoch makes the jump table's entries
    /// and the blocks' successors, which point at slots, stale with them.
    mutating func flushDecodedCache() {
        for slot in 0..<DecodedCacheStorage.blockSlots { decoded.blocks[slot] = CachedBlock() }
        decoded.poolUsed = 0
        codeEpoch &+= 1
    }

    /// Runs cached blocks, each from its first instruction until one leaves
    /// the straight line (a taken branch, a REP that restarts, a fault or an
    /// exit) or stores into the block, until the limit, a fault or exit, or
    /// an instruction the cache does not hold (RF or TF set, a fetch that faults or
    /// leaves RAM, an instruction across a page boundary). A function of its
    /// own, so that the step loop's registers are the blocks'.
    @inline(never)
    mutating func runCachedBlocks(_ executed: inout Int, limit: Int) -> CachedRunEnd {
        var count = executed
        defer { executed = count }
        var previous: UnsafeMutablePointer<CachedBlock>? = nil
        while count < limit {
            // Chained: the last successor, if it starts here and nothing has
            // begun a new epoch since (every barrier, exception and store into
            // code does, and so does a flush of the cache). RF and TF are
            // never set within an epoch: what sets them is a barrier or a fault.
            let block: UnsafeMutablePointer<CachedBlock>
            if let next = previous?.pointee.successor, next.pointee.rip == state.rip,
               next.pointee.checkedEpoch == codeEpoch {
                block = next
            } else if let next = previous?.pointee.alternate, next.pointee.rip == state.rip,
                      next.pointee.checkedEpoch == codeEpoch {
                block = next
            } else {
                // RF lasts one instruction and TF traps after each: both take the uncached path.
                guard state.flags.bits & (RFLAGS.rf | RFLAGS.tf) == 0, let found = lookupBlock() else { return .uncached }
                if let previous {
                    previous.pointee.alternate = previous.pointee.successor
                    previous.pointee.successor = found
                }
                block = found
            }
            previous = block
            let first = decoded.pool + Int(block.pointee.first)
            let length = Int(block.pointee.count) < limit &- count ? Int(block.pointee.count) : limit &- count
            // RIP of the instruction about to run: straight-line handlers do
            // not write state.rip, which is brought up to date when the block
            // stops.
            var rip = block.pointee.rip
            var done = 0
            // No interrupt shadow here: the step loop runs the instruction
            // under one, and a barrier that begins one leaves (below).
            blockInterrupted = false
            executingBlock = block
            while true {
                let insn = first + done
                let result = dispatch(&insn.pointee, rip: rip)
                done &+= 1
                var straight: Bool
                // Tests in the order of frequency rather than a jump table.
                if result == .next {
                    rip = insn.pointee.nextRIP
                    straight = true
                } else if result == .branched {
                    rip = state.rip
                    straight = rip == insn.pointee.traceNext
                } else {
                    if result == .fault { state.rip = rip }
                    count &+= done &- 1
                    executingBlock = nil
                    return .fault
                }
                if blockInterrupted {
                    // An MMIO write (its exit follows the instruction) or a store into this block.
                    if mmioWritePending {
                        mmioWritePending = false
                        state.rip = rip
                        count &+= done
                        executingBlock = nil
                        return .exit
                    }
                    straight = false
                }
                if !straight || done == length { break }
            }
            state.rip = rip
            count &+= done
            executingBlock = nil
            // What sets TF, arms the debug unit (MOV DR, a stop for the owner)
            // or begins an interrupt shadow is a barrier, which ends its block:
            // the step loop takes the instructions that follow one at a time.
            // So is what lets a waiting event be taken (IRET, POPF, STI):
            // the step loop looks at the boundary after it.
            if (first + (done &- 1)).pointee.handler == .barrier
                && (state.flags.bits & RFLAGS.tf != 0 || debugUnit.armed || interruptShadowKind != 0
                    || platform.waitingEvents != 0) {
                return .limit
            }
        }
        return .limit
    }

    /// Notes a guest write of `size` bytes at guest-physical `address`:
    /// into a code page, it begins a new code epoch and unmarks the page (but
    /// the running block's); into the running block, it stops the block after
    /// the current instruction.
    @inline(__always)
    mutating func noteCodeWrite(_ address: UInt64, size: Int) {
        let last = address &+ UInt64(truncatingIfNeeded: size) &- 1
        guard isCodePage(address) || isCodePage(last) || last >> 12 &- address >> 12 > 1 else { return }
        storedIntoCode(address, last: last)
    }

    mutating func storedIntoCode(_ address: UInt64, last: UInt64) {
        codeEpoch &+= 1
        var executingPage = ~UInt64(0)
        if let block = executingBlock {
            // A trace's bytes lie here and there in its page: any store to the
            // page stops it, and the next fetch checks the bytes.
            executingPage = (block.pointee.tag & CachedBlock.physicalMask) >> 12
            if address >> 12 <= executingPage && executingPage <= last >> 12 { blockInterrupted = true }
        }
        let codePages = decoded.codePages
        var page = address >> 12
        while page <= last >> 12 {
            if page != executingPage {
                let (word, mask) = X86CPU.codePageBit(page << 12)
                codePages[word] &= ~mask
            }
            page &+= 1
        }
    }

    /// What the block builder does after `insn`: listed opcodes go on, near
    /// branches end the block, and everything else is a barrier.
    static func blockFlow(_ insn: Instruction) -> BlockFlow {
        let op = insn.opcode
        switch op {
        // Instructions that touch only registers (GPRs, flags, x87, SSE) and
        // memory through the access helpers, whatever they fault with.
        // Listing one whose handler changes CS, SS, the CPL, a control
        // register or EFER, the TLB, the interrupt shadow, or does I/O, would
        // let the block go on under a stale fetch state.
        case 0x00...0x3F where op & 7 < 6,  // ALU
             0x06, 0x0E, 0x16, 0x1E,  // PUSH Sreg
             0x27, 0x2F, 0x37, 0x3F, 0xD4, 0xD5, 0xD7,  // BCD, XLAT
             0x40...0x5F, 0x60...0x63, 0x68...0x6B,
             0x80...0x8D, 0x8F, 0x90...0x99, 0x9B, 0x9C, 0x9E, 0x9F,
             0xA0...0xAF, 0xB0...0xBF, 0xC0, 0xC1, 0xC6...0xC9, 0xD0...0xD3, 0xD8...0xDF,
             0xF5, 0xF6, 0xF7, 0xF8...0xFA, 0xFC, 0xFD,
             0x10D, 0x110...0x11F, 0x128...0x12F, 0x131, 0x138...0x13F, 0x140...0x17F,
             0x190...0x19F, 0x1A0, 0x1A3...0x1A5, 0x1A8, 0x1AB...0x1AF, 0x1B0, 0x1B1, 0x1B3, 0x1B6...0x1BF,
             0x1C0...0x1FF,
             0x200...0x20B, 0x21C...0x21E, 0x30F:  // SSSE3 (those `executeSSSE3` knows)
            return .next
        case 0x70...0x7F, 0x180...0x18F, 0xE0...0xE3:
            return .next
        case 0xE8, 0xE9, 0xEB, 0xC2, 0xC3:
            return .end
        case 0xFE:
            return insn.reg & 7 < 2 ? .next : .barrier
        case 0xFF:
            switch insn.reg & 7 {
            case 0, 1, 6: return .next
            case 2, 4: return .end
            default: return .barrier
            }
        default:
            return .barrier
        }
    }
}
