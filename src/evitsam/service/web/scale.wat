;; The page's mask scaling (decoder.mjs, upscaleMask): low-res logits -> a mask at the photo's size, two passes.
;; Built into scale.wasm by scripts/build_scale_wasm.py. Every pointer is a byte offset into the exported memory.
(module
  (memory (export "memory") 1)

  ;; Along x: across[r * pitch + x] = sum_j weight[x * taps + j] * logits[r * stride + index[x * taps + j]]
  ;; for every low-res row r < rows and output column x < width (float32 logits, int32 indices).
  (func (export "resize_rows")
    (param $logits i32) (param $rows i32) (param $stride i32) (param $index i32) (param $weight i32)
    (param $taps i32) (param $width i32) (param $pitch i32) (param $across i32)
    (local $r i32) (local $x i32) (local $j i32) (local $tap i32) (local $src i32) (local $dst i32) (local $sum f32)
    (block $rows_done
      (loop $row
        (br_if $rows_done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $src (i32.add (local.get $logits) (i32.shl (i32.mul (local.get $r) (local.get $stride)) (i32.const 2))))
        (local.set $dst (i32.add (local.get $across) (i32.shl (i32.mul (local.get $r) (local.get $pitch)) (i32.const 2))))
        (local.set $x (i32.const 0))
        (local.set $tap (i32.const 0))
        (block $columns_done
          (loop $column
            (br_if $columns_done (i32.ge_u (local.get $x) (local.get $width)))
            (local.set $sum (f32.const 0))
            (local.set $j (i32.const 0))
            (block $taps_done
              (loop $next_tap
                (br_if $taps_done (i32.ge_u (local.get $j) (local.get $taps)))
                (local.set $sum
                  (f32.add (local.get $sum)
                    (f32.mul
                      (f32.load (i32.add (local.get $weight) (i32.shl (local.get $tap) (i32.const 2))))
                      (f32.load (i32.add (local.get $src)
                        (i32.shl (i32.load (i32.add (local.get $index) (i32.shl (local.get $tap) (i32.const 2))))
                                 (i32.const 2)))))))
                (local.set $tap (i32.add (local.get $tap) (i32.const 1)))
                (local.set $j (i32.add (local.get $j) (i32.const 1)))
                (br $next_tap)))
            (f32.store (i32.add (local.get $dst) (i32.shl (local.get $x) (i32.const 2))) (local.get $sum))
            (local.set $x (i32.add (local.get $x) (i32.const 1)))
            (br $column)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row))))

  ;; Along y, then the threshold, 16 pixels at a time: for every output row y < height, with its four low-res
  ;; rows rows[4y..4y+3] (int32, weight 0 where fewer) and weights weights[4y..4y+3] (float32),
  ;; mask[y * pitch + x] = 1 if sum_k weight_k * across[row_k * pitch + x] > threshold else 0, for x < pitch
  ;; (a multiple of 16) where columns[x] is 1 (the photo's columns; 0 past them). row_any[y] = 1 where the row has
  ;; a pixel set; column_any[x] |= the column's pixels.
  (func (export "threshold_rows")
    (param $across i32) (param $pitch i32) (param $rows i32) (param $weights i32) (param $height i32)
    (param $threshold f32) (param $mask i32) (param $row_any i32) (param $column_any i32) (param $columns i32)
    (local $y i32) (local $x i32) (local $a0 i32) (local $a1 i32) (local $a2 i32) (local $a3 i32) (local $out i32)
    (local $w0 v128) (local $w1 v128) (local $w2 v128) (local $w3 v128) (local $t v128)
    (local $any v128) (local $set v128) (local $k i32) (local $offset i32)
    (local.set $t (f32x4.splat (local.get $threshold)))
    (block $rows_done
      (loop $row
        (br_if $rows_done (i32.ge_u (local.get $y) (local.get $height)))
        (local.set $k (i32.add (local.get $rows) (i32.shl (local.get $y) (i32.const 4))))
        (local.set $a0 (i32.add (local.get $across) (i32.shl (i32.mul (i32.load offset=0 (local.get $k)) (local.get $pitch)) (i32.const 2))))
        (local.set $a1 (i32.add (local.get $across) (i32.shl (i32.mul (i32.load offset=4 (local.get $k)) (local.get $pitch)) (i32.const 2))))
        (local.set $a2 (i32.add (local.get $across) (i32.shl (i32.mul (i32.load offset=8 (local.get $k)) (local.get $pitch)) (i32.const 2))))
        (local.set $a3 (i32.add (local.get $across) (i32.shl (i32.mul (i32.load offset=12 (local.get $k)) (local.get $pitch)) (i32.const 2))))
        (local.set $k (i32.add (local.get $weights) (i32.shl (local.get $y) (i32.const 4))))
        (local.set $w0 (v128.load32_splat offset=0 (local.get $k)))
        (local.set $w1 (v128.load32_splat offset=4 (local.get $k)))
        (local.set $w2 (v128.load32_splat offset=8 (local.get $k)))
        (local.set $w3 (v128.load32_splat offset=12 (local.get $k)))
        (local.set $out (i32.add (local.get $mask) (i32.mul (local.get $y) (local.get $pitch))))
        (local.set $any (v128.const i32x4 0 0 0 0))
        (local.set $x (i32.const 0))
        (block $columns_done
          (loop $column
            (br_if $columns_done (i32.ge_u (local.get $x) (local.get $pitch)))
            (local.set $offset (i32.shl (local.get $x) (i32.const 2)))
            ;; 16 pixels: four float32x4 sums compared with the threshold, narrowed to 16 bytes of 0 / 1
            (local.set $set
              (v128.and (v128.load (i32.add (local.get $columns) (local.get $x)))
                (i8x16.narrow_i16x8_s
                  (i16x8.narrow_i32x4_s
                    (call $above (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3) (local.get $offset)
                      (local.get $w0) (local.get $w1) (local.get $w2) (local.get $w3) (local.get $t))
                    (call $above (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3)
                      (i32.add (local.get $offset) (i32.const 16))
                      (local.get $w0) (local.get $w1) (local.get $w2) (local.get $w3) (local.get $t)))
                  (i16x8.narrow_i32x4_s
                    (call $above (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3)
                      (i32.add (local.get $offset) (i32.const 32))
                      (local.get $w0) (local.get $w1) (local.get $w2) (local.get $w3) (local.get $t))
                    (call $above (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3)
                      (i32.add (local.get $offset) (i32.const 48))
                      (local.get $w0) (local.get $w1) (local.get $w2) (local.get $w3) (local.get $t))))))
            (v128.store (i32.add (local.get $out) (local.get $x)) (local.get $set))
            (local.set $any (v128.or (local.get $any) (local.get $set)))
            (v128.store (i32.add (local.get $column_any) (local.get $x))
              (v128.or (v128.load (i32.add (local.get $column_any) (local.get $x))) (local.get $set)))
            (local.set $x (i32.add (local.get $x) (i32.const 16)))
            (br $column)))
        (i32.store8 (i32.add (local.get $row_any) (local.get $y)) (v128.any_true (local.get $any)))
        (local.set $y (i32.add (local.get $y) (i32.const 1)))
        (br $row))))

  ;; Four pixels from byte offset $offset of the four rows: -1 (all bits) where their weighted sum > t, else 0.
  (func $above
    (param $a0 i32) (param $a1 i32) (param $a2 i32) (param $a3 i32) (param $offset i32)
    (param $w0 v128) (param $w1 v128) (param $w2 v128) (param $w3 v128) (param $t v128) (result v128)
    (f32x4.gt
      (f32x4.add
        (f32x4.add
          (f32x4.add
            (f32x4.mul (local.get $w0) (v128.load (i32.add (local.get $a0) (local.get $offset))))
            (f32x4.mul (local.get $w1) (v128.load (i32.add (local.get $a1) (local.get $offset)))))
          (f32x4.mul (local.get $w2) (v128.load (i32.add (local.get $a2) (local.get $offset)))))
        (f32x4.mul (local.get $w3) (v128.load (i32.add (local.get $a3) (local.get $offset)))))
      (local.get $t))))
