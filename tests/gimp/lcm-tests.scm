; Script-Fu side of the plug-in's tests in a real GIMP (see run-gimp-tests.sh).
; Each lcm-test-* procedure builds an image, calls the plug-in the way a
; script does, checks what it can inside GIMP and exports layers to PNG for
; the runner to compare with gimp-lcm-cli. A failed check raises an error,
; so the batch exits with status 70; success prints "LCM-TEST-PASSED name".

(script-fu-use-v3)

(define (check condition . message)
  (if (not condition)
      (error (apply string-append "check failed: " message))))

(define (layer-count image) (vector-length (gimp-image-get-layers image)))

(define (same-pixel? a ax ay b bx by)
  (equal? (gimp-drawable-get-pixel a ax ay) (gimp-drawable-get-pixel b bx by)))

; Writes a drawable's pixels alone (its own size, no offsets) to a PNG file.
(define (export-drawable image drawable path)
  (let* ((width (gimp-drawable-get-width drawable))
         (height (gimp-drawable-get-height drawable))
         (copy (gimp-image-new-with-precision width height (gimp-image-get-base-type image)
                                               (gimp-image-get-precision image)))
         (layer (gimp-layer-new-from-drawable drawable copy)))
    (gimp-image-insert-layer copy layer 0 0)
    (gimp-layer-set-offsets layer 0 0)
    (gimp-file-save RUN-NONINTERACTIVE copy path -1)
    (gimp-image-delete copy)))

; Writes the selection's raw values over a layer's area to a grey PNG: the
; channel goes into an 8-bit LINEAR grey image, whose format is the
; selection's own ("Y u8"), so no value is converted.
(define (export-selection image layer path)
  (let* ((offsets (gimp-drawable-get-offsets layer))
         (saved (gimp-selection-save image))
         (copy (gimp-image-new-with-precision (gimp-image-get-width image)
                                               (gimp-image-get-height image)
                                               GRAY PRECISION-U8-LINEAR))
         (mask (gimp-layer-new-from-drawable saved copy)))
    (gimp-image-insert-layer copy mask 0 0)
    (gimp-image-crop copy (gimp-drawable-get-width layer) (gimp-drawable-get-height layer)
                     (car offsets) (cadr offsets))
    (gimp-file-save RUN-NONINTERACTIVE copy path -1)
    (gimp-image-delete copy)
    (gimp-image-remove-channel image saved)))

(define (passed name)
  (display (string-append "LCM-TEST-PASSED " name))
  (newline))

; (1) txt2img on a new image: a new 64x48 layer at the origin, above the
; selected layer, named from the prompt.
(define (lcm-test-txt2img model out)
  (let* ((image (gimp-image-new 96 80 RGB))
         (background (gimp-layer-new image "background" 96 80 RGB-IMAGE 100
                                     LAYER-MODE-NORMAL)))
    (gimp-image-insert-layer image background 0 0)
    (gimp-drawable-fill background FILL-WHITE)
    (let ((layer (plug-in-lcm-txt2img #:run-mode RUN-NONINTERACTIVE #:image image
                                      #:drawables (vector background) #:model model
                                      #:prompt "a red fox in the snow" #:seed 42
                                      #:width 64 #:height 48)))
      (check (= (layer-count image) 2) "txt2img adds one layer")
      (check (= (vector-ref (gimp-image-get-layers image) 0) layer) "the new layer is on top")
      (check (= (gimp-drawable-get-width layer) 64) "width 64")
      (check (= (gimp-drawable-get-height layer) 48) "height 48")
      (check (equal? (gimp-drawable-get-offsets layer) '(0 0)) "at the image's origin")
      (check (equal? (gimp-item-get-name layer) "LCM: a red fox in the snow (seed 42)")
             "layer named from the prompt and seed: " (gimp-item-get-name layer))
      (export-drawable image layer (string-append out "/gimp.png")))
    (gimp-image-delete image)
    (passed "txt2img")))

; (2) img2img on an RGB layer: onto a new layer (default), then replacing the
; layer's pixels; both must equal the CLI's picture for the same arguments.
(define (lcm-test-img2img model source out)
  (let* ((image (gimp-file-load RUN-NONINTERACTIVE source))
         (source-layer (vector-ref (gimp-image-get-layers image) 0)))
    (gimp-layer-set-offsets source-layer 8 16)
    (let ((layer (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                                      #:drawables (vector source-layer) #:model model
                                      #:prompt "an oil painting" #:seed 7 #:strength 0.6)))
      (check (= (layer-count image) 2) "img2img adds one layer")
      (check (equal? (gimp-drawable-get-offsets layer) '(8 16)) "the new layer covers the source")
      (export-drawable image layer (string-append out "/gimp-new-layer.png")))
    (let ((layer (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                                      #:drawables (vector source-layer) #:model model
                                      #:prompt "an oil painting" #:seed 7 #:strength 0.6
                                      #:output 1)))
      (check (= layer source-layer) "replace returns the source layer")
      (check (= (layer-count image) 2) "replace adds no layer")
      (export-drawable image source-layer (string-append out "/gimp-replaced.png")))
    (gimp-image-delete image)
    (passed "img2img")))

; (3) inpainting through a feathered elliptic selection on a layer placed at
; an offset in a larger image. The selection plus its context covers the
; whole 512x384 layer, so the model sees the layer unscaled and the result
; can be compared with the CLI's bit for bit.
(define (lcm-test-inpaint model source out)
  (let* ((image (gimp-image-new 600 440 RGB))
         (background (gimp-layer-new image "background" 600 440 RGB-IMAGE 100
                                     LAYER-MODE-NORMAL))
         (source-layer (gimp-file-load-layer RUN-NONINTERACTIVE image source)))
    (gimp-image-insert-layer image background 0 0)
    (gimp-drawable-fill background FILL-WHITE)
    (gimp-image-insert-layer image source-layer 0 0)
    (gimp-layer-set-offsets source-layer 40 32)
    (gimp-image-select-ellipse image CHANNEL-OP-REPLACE 100 80 380 300)
    (gimp-selection-feather image 24)
    (export-selection image source-layer (string-append out "/mask.png"))
    (let ((layer (plug-in-lcm-inpaint #:run-mode RUN-NONINTERACTIVE #:image image
                                      #:drawables (vector source-layer) #:model model
                                      #:prompt "a blue bird" #:seed 5)))
      (check (= (layer-count image) 3) "inpainting adds one layer")
      (check (= (vector-ref (gimp-image-get-layers image) 0) layer) "the new layer is on top")
      (check (equal? (gimp-drawable-get-offsets layer) '(40 32)) "the new layer is over the source")
      (check (= (gimp-drawable-get-width layer) 512) "the new layer covers the source")
      ; Corners are outside the ellipse: the source's pixels exactly.
      (check (same-pixel? layer 0 0 source-layer 0 0) "top left pixel unchanged")
      (check (same-pixel? layer 511 383 source-layer 511 383) "bottom right pixel unchanged")
      (export-drawable image layer (string-append out "/gimp.png")))
    (gimp-image-delete image)
    (passed "inpaint")))

; (4) a greyscale image: read as RGB, written back as grey onto a grey layer.
(define (lcm-test-gray model source cli-result out)
  (let* ((image (gimp-file-load RUN-NONINTERACTIVE source))
         (source-layer (vector-ref (gimp-image-get-layers image) 0)))
    (check (= (gimp-image-get-base-type image) GRAY) "the source loads as a grey image")
    (let ((layer (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                                      #:drawables (vector source-layer) #:model model
                                      #:prompt "a charcoal drawing" #:seed 3 #:strength 0.7)))
      (check (= (layer-count image) 2) "img2img adds one layer")
      (check (gimp-drawable-is-gray layer) "the new layer is grey")
      (export-drawable image layer (string-append out "/gimp.png")))
    ; The CLI's RGB picture, turned grey by GIMP (babl) as the plug-in's is.
    (let ((cli-layer (gimp-file-load-layer RUN-NONINTERACTIVE image cli-result)))
      (gimp-image-insert-layer image cli-layer 0 0)
      (export-drawable image cli-layer (string-append out "/cli-gray.png")))
    (gimp-image-delete image)
    (passed "gray")))

; (5) wrong uses fail with an error and leave the image as it was: several
; selected layers, an indexed image, inpainting with nothing selected, a
; model that does not exist. The last failure is not caught, so the batch
; exits with status 70 and GIMP prints the plug-in's message.
(define (fails? thunk) (catch #t (begin (thunk) #f)))

(define (lcm-test-errors model bad-model)
  (let* ((image (gimp-image-new 64 64 RGB))
         (lower (gimp-layer-new image "lower" 64 64 RGB-IMAGE 100 LAYER-MODE-NORMAL))
         (upper (gimp-layer-new image "upper" 64 64 RGB-IMAGE 100 LAYER-MODE-NORMAL)))
    (gimp-image-insert-layer image lower 0 0)
    (gimp-image-insert-layer image upper 0 0)
    (gimp-drawable-fill lower FILL-WHITE)
    (gimp-drawable-fill upper FILL-WHITE)
    (define (unchanged?)
      (and (= (layer-count image) 2)
           (equal? (gimp-drawable-get-pixel upper 10 10) (gimp-drawable-get-pixel lower 10 10))))
    (check (fails? (lambda ()
                     (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                                          #:drawables (vector lower upper) #:model model)))
           "two selected layers are refused")
    (check (unchanged?) "image unchanged after two layers")
    (check (fails? (lambda ()
                     (plug-in-lcm-inpaint #:run-mode RUN-NONINTERACTIVE #:image image
                                          #:drawables (vector upper) #:model model)))
           "inpainting without a selection is refused")
    (check (unchanged?) "image unchanged after no selection")
    (check (fails? (lambda ()
                     (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                                          #:drawables (vector upper) #:model bad-model)))
           "a missing model is an error")
    (check (unchanged?) "image unchanged after a missing model")
    (let ((indexed (gimp-image-duplicate image)))
      (gimp-image-convert-indexed indexed CONVERT-DITHER-NONE CONVERT-PALETTE-GENERATE 16
                                  #f #f "")
      (check (fails? (lambda ()
                       (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image indexed
                                            #:drawables (gimp-image-get-selected-drawables indexed)
                                            #:model model)))
             "indexed images are refused")
      (gimp-image-delete indexed))
    (display "LCM-TEST-CAUGHT-ALL")
    (newline)
    (plug-in-lcm-img2img #:run-mode RUN-NONINTERACTIVE #:image image
                         #:drawables (vector upper) #:model bad-model)))
